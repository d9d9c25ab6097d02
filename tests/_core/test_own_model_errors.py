"""Models this library cannot serve get a clear error before any work (issue: bring your own model)."""
import subprocess
import sys

import pytest
import torch
from torch import nn

from captum_invert import (ActivationMaximization, BackwardPassInversion, ForwardPassInversion,
                           GeneralizedInversion, InversionError)


class _Round(nn.Module):
    def forward(self, x):
        return torch.round(x)


def _mlp():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.SELU(), nn.Linear(8, 3))
    m.input_shape = (1, 4, 4)
    return m


@pytest.mark.parametrize("cls", [ForwardPassInversion, BackwardPassInversion, GeneralizedInversion,
                                 ActivationMaximization])
def test_max_iter_below_one_is_a_value_error(cls):
    with pytest.raises(ValueError, match="`max_iter` must be an int > 0"):
        cls(_mlp()).attribute(target=1, max_iter=0)


def test_meta_device_model_is_refused_before_work():
    with torch.device("meta"):
        m = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    with pytest.raises(ValueError, match="meta device"):
        ForwardPassInversion(m, input_shape=(16,)).attribute(target=1)


def test_embedding_model_points_to_layer_inversion():
    m = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(40, 3))
    with pytest.raises(ValueError, match="LayerInversion"):
        ForwardPassInversion(m, input_shape=(5,)).attribute(target=1)


def test_guessed_input_shape_says_to_pass_input_shape():
    conv = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 28 * 28, 10))
    with pytest.raises(ValueError, match=r"pass the shape of one input, e\.g\. .*input_shape=\(1, 28, 28\)"):
        ForwardPassInversion(conv).attribute(target=1)
    conv.pretrained_cfg = {"input_size": (1, 28, 28)}  # as timm models declare it
    assert ForwardPassInversion(conv).input_shape == (1, 28, 28)


def test_timm_input_size_follows_in_chans_and_img_size():
    import timm

    # pretrained_cfg keeps the pretrained weights' (3, 224, 224) whatever the model was built with
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=4, in_chans=1, img_size=32,
                            patch_size=8, depth=1, embed_dim=32, num_heads=2)
    assert vit.pretrained_cfg["input_size"] == (3, 224, 224)
    assert ForwardPassInversion(vit).input_shape == (1, 32, 32)
    cnn = timm.create_model("resnet10t", pretrained=False, num_classes=4, in_chans=2)
    assert ForwardPassInversion(cnn).input_shape == (2, *cnn.pretrained_cfg["input_size"][1:])


def test_zero_input_gradient_is_named_without_retries():
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 3), _Round())
    inv = ForwardPassInversion(m, input_shape=(16,))
    with pytest.raises(InversionError, match="zero gradient") as e:
        inv.attribute(target=[0, 1, 2, 0], seed=0)
    assert inv.last_stats["restarts"] == 0  # named at the first start, not after every retry
    assert e.value.n_verified < 4


def test_version_and_help_do_not_import_torch():
    code = ("import sys\nfrom captum_invert.cli import main\n"
            "for a in (['--version'], ['--help']):\n"
            "    try:\n        main(a)\n    except SystemExit as e:\n        assert e.code == 0\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "captum-invert 0." in out.stdout and "usage: captum-invert" in out.stdout


@pytest.mark.parametrize("sigmoid", [False, True])
def test_single_output_is_a_binary_classifier(sigmoid):
    torch.manual_seed(0)
    layers = [nn.Flatten(), nn.Linear(784, 1)] + ([nn.Sigmoid()] if sigmoid else [])
    m = nn.Sequential(*layers)
    p1 = (lambda x: m(x)[:, 0]) if sigmoid else (lambda x: torch.sigmoid(m(x)[:, 0]))
    for cls in (ForwardPassInversion, GeneralizedInversion):
        inv = cls(m, input_shape=(1, 28, 28))
        x1 = inv.attribute(target=1, n_samples=4, seed=0)
        x0, d0 = inv.attribute(target=0, n_samples=4, seed=0, input_range=(0.0, 1.0),
                               return_convergence_delta=True)
        with torch.no_grad():
            assert (p1(x1) >= 0.9).all() and (p1(x0) <= 0.1).all()
            assert torch.allclose(d0, p1(x0).double(), atol=1e-5)  # delta = 1 - p(class 0)
    with pytest.raises(ValueError, match="single output"):
        BackwardPassInversion(m, input_shape=(1, 28, 28)).attribute(target=1)
    with pytest.raises(ValueError, match="out of range"):
        ForwardPassInversion(m, input_shape=(1, 28, 28)).attribute(target=2)


def test_tuple_and_dict_outputs_say_how_to_select():
    class Dict(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return {"logits": self.lin(x)}

    with pytest.raises(ValueError, match=r"keys \['logits'\].*select="):
        ForwardPassInversion(Dict(), input_shape=(4,)).attribute(target=1)
    m = Dict()
    x = ForwardPassInversion(m, input_shape=(4,), select="logits").attribute(target=1, seed=0)
    with torch.no_grad():
        assert float(m(x)["logits"].softmax(1)[0, 1]) >= 0.9
