"""Models as users have them: Hugging Face classifiers, ONNX files, timm and torchvision by name,
normalised inputs; through the Python API and ``captum-invert invert``. Every written sample is
checked on the original model (onnxruntime for ONNX files)."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from captum_invert import ForwardPassInversion, GeneralizedInversion
from captum_invert.checkpoint import load_model
from captum_invert.cli import main

COMMON = ["--n-samples", "3", "--input-range", "0,1", "--no-progress"]


def _samples(out):
    s = load_file(str(out / "samples.safetensors"))
    return s, json.loads((out / "metrics.json").read_text())


def _norm(x, mean, std):
    c = x.shape[1]
    return (x - torch.tensor(mean).view(1, -1, 1, 1).expand(1, c, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


# --- Hugging Face ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_models():
    tr = pytest.importorskip("transformers", reason="transformers (the dev extra) is not installed")
    torch.manual_seed(0)
    vit = tr.ViTForImageClassification(tr.ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=4)).eval()
    res = tr.ResNetForImageClassification(tr.ResNetConfig(
        num_channels=3, embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=4)).eval()
    with torch.no_grad():  # untrained heads are near-uniform: make them confident
        vit.classifier.weight.mul_(30)
        res.classifier[1].weight.mul_(30)
    return {"vit": vit, "resnet": res}


@pytest.mark.parametrize("name", ["vit", "resnet"])
@pytest.mark.parametrize("cls", [ForwardPassInversion, GeneralizedInversion])
def test_hugging_face_classifiers_invert_without_a_wrapper(hf_models, name, cls):
    m = hf_models[name]
    inv = cls(m, input_shape=None if name == "vit" else (3, 32, 32))
    assert inv.input_shape == (3, 32, 32)
    x = inv.attribute(target=[0, 3], seed=0, input_range=(0, 1))
    with torch.no_grad():
        p = m(x).logits.softmax(1)  # the ModelOutput's logits were taken
    assert float(p[0, 0]) >= 0.9 and float(p[1, 3]) >= 0.9
    if cls is GeneralizedInversion:
        assert "classifier" in str(inv.plan)  # the caller's module names, not the adapter's


@pytest.mark.parametrize("name", ["vit", "resnet"])
def test_hugging_face_directory_through_the_cli(tmp_path, hf_models, name):
    m = hf_models[name]
    d = tmp_path / name
    m.save_pretrained(d)
    mean, std = [0.5, 0.4, 0.3], [0.25, 0.25, 0.3]
    (d / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True, "image_mean": mean,
                                                            "image_std": std}))
    out = tmp_path / "o"
    shape = [] if name == "vit" else ["--input-shape", "3,32,32"]
    assert main(["invert", f"hf:{d}", "--target", "2", "--out", str(out)] + shape + COMMON) == 0
    s, met = _samples(out)
    assert met["model"]["kind"] == "hf" and met["normalize"] == [mean, std]
    x = s["inputs"]
    assert len(x) == 3 and float(x.min()) >= 0 and float(x.max()) <= 1
    with torch.no_grad():
        assert float(m(_norm(x, mean, std)).logits.softmax(1)[:, 2].min()) >= 0.9


# --- timm and torchvision by name -----------------------------------------------------------
def test_timm_by_name_with_weights_and_options(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model("resnet10t", num_classes=3, in_chans=1, pretrained=False).eval()
    with torch.no_grad():
        ref.fc.weight.mul_(100)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "w.safetensors"))
    out = tmp_path / "o"
    assert main(["invert", "timm:resnet10t", "--weights", str(tmp_path / "w.safetensors"), "--num-classes", "3",
                 "--in-chans", "1", "--input-shape", "1,32,32", "--target", "1", "--out", str(out)] + COMMON) == 0
    s, met = _samples(out)
    # timm records RGB statistics even for in_chans=1: no convention, so none is applied, and said
    assert met["model"]["kind"] == "timm" and "normalize" not in met and "3-channel" in met["model"]["normalize_note"]
    with torch.no_grad():
        assert float(ref(s["inputs"]).softmax(1)[:, 1].min()) >= 0.9
    out = tmp_path / "o2"  # an explicit normalisation
    assert main(["invert", "timm:resnet10t", "--weights", str(tmp_path / "w.safetensors"), "--num-classes", "3",
                 "--in-chans", "1", "--input-shape", "1,32,32", "--normalize", "0.45/0.25", "--target", "2",
                 "--out", str(out)] + COMMON) == 0
    s, met = _samples(out)
    assert met["normalize"] == [[0.45], [0.25]]
    with torch.no_grad():
        assert float(ref(_norm(s["inputs"], [0.45], [0.25])).softmax(1)[:, 2].min()) >= 0.9


def test_torchvision_by_name(tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.get_model("resnet18", weights=None, num_classes=3).eval()
    with torch.no_grad():
        ref.fc.weight.mul_(30)
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "o"
    assert main(["invert", "torchvision:resnet18", "--weights", str(tmp_path / "w.pt"), "--num-classes", "3",
                 "--input-shape", "3,48,48", "--method", "forward", "--target", "0", "--out", str(out)]
                + COMMON) == 0
    s, met = _samples(out)
    assert met["model"]["kind"] == "torchvision"
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # torchvision's published preprocessing
    assert met["normalize"] == [list(mean), list(std)]
    with torch.no_grad():
        assert float(ref(_norm(s["inputs"], mean, std)).softmax(1)[:, 0].min()) >= 0.9


def test_models_by_name_and_onnx_through_the_python_api(tmp_path, outside_cnn):
    from captum_invert.checkpoint import load_onnx

    net, info = load_model("torchvision:resnet18", num_classes=4)
    assert info["kind"] == "torchvision" and info["input_shape"] == (3, 224, 224)
    with torch.no_grad():
        net.fc.weight.mul_(30)
    inv = ForwardPassInversion(net, input_shape=(3, 40, 40), normalize=info["normalize"])
    x = inv.attribute(target=[1, 3], seed=0, input_range=(0, 1))
    with torch.no_grad():
        p = net(_norm(x, *info["normalize"])).softmax(1)
    assert float(p[0, 1]) >= 0.9 and float(p[1, 3]) >= 0.9
    net, info = load_model("timm:resnet10t", num_classes=2, in_chans=3)
    assert info["kind"] == "timm" and len(info["normalize"][0]) == 3
    with pytest.raises(ValueError, match="--num-classes"):
        load_model(str(tmp_path / "x.onnx"), num_classes=3)
    _onnx_ok()
    _export(outside_cnn, torch.rand(2, 1, 28, 28), tmp_path / "cnn.onnx")
    onnx_net = load_onnx(str(tmp_path / "cnn.onnx"))
    x = GeneralizedInversion(onnx_net, input_shape=(1, 28, 28)).attribute(target=[0, 5], seed=0,
                                                                         input_range=(0, 1))
    with torch.no_grad():
        assert bool((outside_cnn(x).softmax(1)[torch.arange(2), torch.tensor([0, 5])] >= 0.9).all())


def test_generate_with_a_normalisation(tmp_path, outside_cnn):
    from captum_invert import generate
    from captum_invert.generation import InversionDataset

    generate(outside_cnn, tmp_path / "g", [2, 8], 2, method="forward", input_range=(0, 1),
             input_shape=(1, 28, 28), normalize=((0.3,), (0.4,)))
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    assert cfg["normalize"] == [[0.3], [0.4]]  # a resumed run with another normalisation is refused
    ds = InversionDataset(tmp_path / "g")
    with torch.no_grad():
        p = outside_cnn((ds.inputs - 0.3) / 0.4).softmax(1)
    assert bool((p[torch.arange(len(ds)), ds.targets] >= 0.9).all())
    assert float(ds.inputs.min()) >= 0 and float(ds.inputs.max()) <= 1


@pytest.mark.parametrize("spec, extra, match", [
    ("timm:resnet_no_such_net", [], "timm .* has no model 'resnet_no_such_net'"),
    ("torchvision:resnet1800", [], "similar names: .*resnet18"),
    ("torchvision:resnet18", ["--in-chans", "1"], "timm option"),
    ("timm:resnet10t", ["--normalize", "0.1,0.2/0.5"], "mean has 2 values but the input has 3 channel"),
    ("timm:resnet10t", ["--normalize", "imagenet/x"], "`--normalize` must be"),
])
def test_bad_model_forms_are_clear_errors(tmp_path, capsys, spec, extra, match):
    import re

    assert main(["invert", spec, "--target", "0", "--out", str(tmp_path / "o")] + extra + COMMON) == 2
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert not (tmp_path / "o").exists()  # refused before any work


# --- ONNX -----------------------------------------------------------------------------------
def _onnx_ok():
    for mod in ("onnx", "onnx2torch", "onnxruntime"):
        pytest.importorskip(mod, reason=f"{mod} (the [onnx] extra) is not installed")


def _export(model, x, path):
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False,
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})


def test_onnx_of_a_cnn_written_outside(tmp_path, outside_cnn):
    _onnx_ok()
    path = tmp_path / "cnn.onnx"
    _export(outside_cnn, torch.rand(2, 1, 28, 28), path)
    net, info = load_model(str(path))
    assert info["kind"] == "onnx" and info["input_shape"] == (1, 28, 28)
    out = tmp_path / "o"
    assert main(["invert", str(path), "--target", "7", "--out", str(out)] + COMMON) == 0
    s, met = _samples(out)
    assert met["onnxruntime"]["verified"] == met["onnxruntime"]["of"] == 3
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = torch.from_numpy(sess.run(None, {"x": s["inputs"].numpy()})[0])
    assert float(logits.softmax(1)[:, 7].min()) >= 0.9
    with torch.no_grad():  # and the original PyTorch model agrees
        assert float(outside_cnn(s["inputs"]).softmax(1)[:, 7].min()) >= 0.9


def test_onnx_with_an_unsupported_operator_is_refused(tmp_path, capsys):
    _onnx_ok()
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="example.ops")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("example.ops", 1)])
    onnx.save(model, str(tmp_path / "bad.onnx"))
    assert main(["invert", str(tmp_path / "bad.onnx"), "--target", "0", "--out", str(tmp_path / "o")] + COMMON) == 2
    err = capsys.readouterr().err
    assert "onnx2torch cannot convert" in err and "NoSuchOp" in err


@pytest.fixture(scope="module")
def text_orientation_onnx():
    """The real 2-class text-orientation classifier shipped in the rapidocr-onnxruntime 1.4.4
    wheel (PaddleOCR's ch_ppocr_mobile_v2.0_cls, 3x48x192, MobileNetV3 with hard-swish and SE
    blocks), fetched once with pip into the cache; skipped when pip cannot reach it."""
    _onnx_ok()
    import subprocess
    import sys
    import zipfile

    from captum_invert.models.training import cache_dir

    name = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    d = cache_dir() / "onnx"
    path = d / name
    if not path.is_file():
        d.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(d),
                            "rapidocr-onnxruntime==1.4.4"], capture_output=True, text=True, timeout=300)
        wheels = list(d.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
        if r.returncode != 0 or not wheels:
            pytest.skip(f"pip could not fetch rapidocr-onnxruntime 1.4.4: {r.stderr[-300:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            path.write_bytes(z.read(f"rapidocr_onnxruntime/models/{name}"))
        for w in wheels:
            os.remove(w)
    return path


@pytest.mark.parametrize("target", [0, 1])
def test_real_text_orientation_classifier_inverts_both_classes(tmp_path, text_orientation_onnx, target):
    out = tmp_path / "o"
    # its preprocessing: pixels in [0, 1], then (x - 0.5) / 0.5
    assert main(["invert", str(text_orientation_onnx), "--input-shape", "3,48,192", "--normalize", "0.5/0.5",
                 "--method", "forward", "--target", str(target), "--out", str(out)] + COMMON) == 0
    s, met = _samples(out)
    x = s["inputs"]
    assert len(x) == 3 and float(x.min()) >= 0 and float(x.max()) <= 1
    assert met["onnxruntime"]["verified"] == 3 and met["onnxruntime"]["max_prob_gap"] < 1e-3
    import onnxruntime as ort

    sess = ort.InferenceSession(str(text_orientation_onnx), providers=["CPUExecutionProvider"])
    p = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: ((x - 0.5) / 0.5).numpy()})[0])
    assert float(p[:, target].min()) >= 0.9  # its last op is a Softmax: these are probabilities


# --- the command line's own fixes ------------------------------------------------------------
def test_negative_ranges_parse_and_files_get_ordinary_permissions(tmp_path, outside_cnn):
    path = tmp_path / "cnn.ts"
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Identity(), outside_cnn)), str(path))
    out = tmp_path / "o"
    assert main(["invert", str(path), "--target", "4", "--input-shape", "1,28,28", "--input-range", "-1,1",
                 "--n-samples", "2", "--out", str(out), "--no-progress"]) == 0
    s, met = _samples(out)
    assert met["input_range"] == [-1.0, 1.0] and float(s["inputs"].min()) >= -1.0
    mask = os.umask(0)
    os.umask(mask)
    assert (os.stat(out / "samples.safetensors").st_mode & 0o777) == (0o666 & ~mask)


def test_missing_input_shape_is_reported_as_the_flag(tmp_path, capsys):
    path = tmp_path / "conv.ts"
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())), str(path))
    assert main(["invert", str(path), "--target", "0", "--out", str(tmp_path / "o")] + COMMON) == 2
    err = capsys.readouterr().err
    assert "--input-shape" in err and "input_shape=(" not in err


def test_prior_flag(tmp_path, outside_cnn, capsys):
    path = tmp_path / "cnn.ts"
    torch.jit.save(torch.jit.script(outside_cnn), str(path))
    from captum_invert.datasets import load_digits

    x, y = load_digits("train").tensors
    torch.save({"images": x[:200], "labels": y[:200]}, tmp_path / "refs.pt")
    out = tmp_path / "o"
    assert main(["invert", str(path), "--target", "3", "--input-shape", "1,28,28", "--method", "forward",
                 "--prior", f"data:{tmp_path / 'refs.pt'}", "--out", str(out)] + COMMON) == 0
    s, met = _samples(out)
    assert met["prior"].startswith("data:")
    with torch.no_grad():
        assert float(outside_cnn(s["inputs"]).softmax(1)[:, 3].min()) >= 0.9
    assert main(["invert", str(path), "--target", "3", "--input-shape", "1,28,28", "--prior", "pca",
                 "--out", str(tmp_path / "o2")] + COMMON) == 2
    assert "`--prior` must be auto, none or data:PATH" in capsys.readouterr().err
