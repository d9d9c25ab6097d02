"""``captum-invert invert MODEL`` on models saved outside the project, and a light ``--help``."""
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from captum_invert.checkpoint import parse_target
from captum_invert.cli import main

from .conftest import fit_on_digits as _fit


def _check_written(out, model, target_class=None, dist=None):
    s = load_file(str(out / "samples.safetensors"))
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_verified"] == m["n_requested"] == len(s["inputs"]) == 6
    with torch.no_grad():
        p = model(s["inputs"]).softmax(1)
    assert torch.allclose(p, s["probs"], atol=1e-5)
    if target_class is not None:
        assert bool((p[:, target_class] >= 0.9).all())
    else:
        assert float((p - dist).abs().max()) <= 0.02
    assert bool(((s["inputs"] >= 0) & (s["inputs"] <= 1)).all())
    assert (out / "grid.png").stat().st_size > 2000
    return m


@pytest.fixture(scope="module")
def cnn(outside_cnn):
    return outside_cnn


def test_invert_torchscript_file(tmp_path, cnn):
    path = tmp_path / "cnn.ts"
    torch.jit.save(torch.jit.script(cnn), str(path))
    out = tmp_path / "o"
    assert main(["invert", str(path), "--target", "3", "--n-samples", "6", "--input-shape", "1,28,28",
                 "--input-range", "0,1", "--out", str(out), "--no-progress"]) == 0
    m = _check_written(out, cnn, target_class=3)
    assert m["model"]["kind"] == "torchscript" and len(m["model"]["sha256"]) == 64


def test_invert_exported_program_with_a_distribution(tmp_path, cnn):
    path = tmp_path / "cnn.pt2"
    ep = torch.export.export(cnn, (torch.rand(2, 1, 28, 28),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(path))
    out = tmp_path / "o"
    assert main(["invert", str(path), "--method", "forward", "--target", "2:0.6,5:0.4", "--n-samples", "6",
                 "--input-shape", "1,28,28", "--input-range", "0,1", "--out", str(out), "--no-progress"]) == 0
    t = torch.zeros(10)
    t[2], t[5] = 0.6, 0.4
    m = _check_written(out, cnn, dist=t)
    assert m["model"]["kind"] == "torch.export"


def test_invert_factory_with_weights(tmp_path, cnn, user_factory):
    torch.manual_seed(1)
    net = _fit(user_factory.make())
    torch.save({"state_dict": net.state_dict()}, tmp_path / "w.pt")
    out = tmp_path / "o"
    assert main(["invert", "usernets:make", "--weights", str(tmp_path / "w.pt"), "--method", "backward",
                 "--target", "7", "--n-samples", "6", "--input-shape", "1,28,28", "--input-range", "0,1",
                 "--out", str(out), "--no-progress"]) == 0
    _check_written(out, net.eval(), target_class=7)


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(64, 10), nn.Linear(12, 10)

    def forward(self, x, v):
        return self.a(x.flatten(1)) + self.b(v)


def test_invert_a_model_of_two_inputs(tmp_path):
    torch.manual_seed(0)
    net = _TwoInputs().eval()
    with torch.no_grad():  # confident enough that every class is reachable inside the box
        net.a.weight.mul_(10)
        net.b.weight.mul_(10)
    path = tmp_path / "two.ts"
    torch.jit.save(torch.jit.script(net), str(path))
    out = tmp_path / "o"
    assert main(["invert", str(path), "--method", "forward", "--target", "4", "--n-samples", "5",
                 "--input-shape", "1,8,8;12", "--input-range", "0,1", "--out", str(out), "--no-progress"]) == 0
    s = load_file(str(out / "samples.safetensors"))
    assert s["inputs.0"].shape == (5, 1, 8, 8) and s["inputs.1"].shape == (5, 12)
    with torch.no_grad():
        p = net(s["inputs.0"], s["inputs.1"]).softmax(1)
    assert torch.allclose(p, s["probs"], atol=1e-5) and bool((p[:, 4] >= 0.9).all())
    assert json.loads((out / "metrics.json").read_text())["input_shape"] == [[1, 8, 8], [12]]


def test_invert_errors(tmp_path, capsys):
    assert main(["invert", str(tmp_path / "missing.pt"), "--target", "1", "--out", str(tmp_path)]) == 2
    assert "package.module:factory" in capsys.readouterr().err
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"not a model")
    assert main(["invert", str(bad), "--target", "1", "--out", str(tmp_path)]) == 2
    assert "neither a TorchScript file nor a torch.export program" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--target"):
        parse_target("0.5,0.5", 3)
    with pytest.raises(ValueError, match="out of range"):
        parse_target("12", 10)
    with pytest.raises(ValueError, match="sum to 1"):
        parse_target("1:0.5,2:0.1", 10)
    with pytest.raises(SystemExit):
        main(["invert", "x.pt", "--method", "lbfgs", "--target", "1"])
