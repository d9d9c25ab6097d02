"""normalize=(mean, std): the methods work in pixel space, the model sees normalised inputs."""
import pytest
import torch
from torch import nn

from captum_invert import BackwardPassInversion, ForwardPassInversion, GeneralizedInversion
from captum_invert.blocks.normalize import Normalize

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
BOX = (0.0, 1.0)


def _norm(x):
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(8 * 8 * 8, 5)).eval()
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 30), nn.SELU(), nn.Linear(30, 4)).eval()
    return cnn, mlp


def test_normalize_module_and_inverse():
    m = Normalize(MEAN, STD, (3, 4, 4))
    x = torch.rand(2, 3, 4, 4)
    assert torch.allclose(m(x), _norm(x))
    assert torch.allclose(m.inverse(m(x)), x, atol=1e-6)
    flat = x.reshape(2, -1)  # the back-pass chain passes flat tensors
    assert torch.allclose(m(flat), _norm(x).reshape(2, -1))


@pytest.mark.parametrize("cls", [ForwardPassInversion, GeneralizedInversion])
def test_pixel_space_box_and_verification(nets, cls):
    cnn, _ = nets
    inv = cls(cnn, input_shape=(3, 16, 16), normalize=(MEAN, STD))
    x = inv.attribute(target=2, n_samples=4, input_range=BOX, seed=0)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    with torch.no_grad():
        p = cnn(_norm(x)).softmax(1)[:, 2]
    assert float(p.min()) >= 0.9
    # without the normalisation the same pixels are not what was verified
    with torch.no_grad():
        assert not torch.allclose(cnn(x).softmax(1)[:, 2], p, atol=1e-3)


def test_lp_route_takes_normalize_as_an_affine_layer(nets):
    cnn, _ = nets
    inv = GeneralizedInversion(cnn, input_shape=(3, 16, 16), normalize=(MEAN, STD), lp=True)
    first = inv.plan.blocks[0]
    assert first.kind == "lp" and isinstance(first.calls[0].module, Normalize)
    reg = BackwardPassInversion(cnn, input_shape=(3, 16, 16), normalize=(MEAN, STD)).region(1, seed=0,
                                                                                            input_range=BOX)
    pts = reg.sample(30, seed=0).float()
    assert float(pts.min()) >= 0.0 and float(pts.max()) <= 1.0
    with torch.no_grad():
        assert float(cnn(_norm(pts)).softmax(1)[:, 1].min()) >= 0.9


def test_backward_pass_inverts_the_normalisation(nets):
    _, mlp = nets
    inv = BackwardPassInversion(mlp, input_shape=(3, 8, 8), normalize=(MEAN, STD))
    x = inv.attribute(target=[1, 3], seed=0)
    with torch.no_grad():
        p = mlp(_norm(x)).softmax(1)
    assert float(p[0, 1]) >= 0.9 and float(p[1, 3]) >= 0.9


def test_auto_reads_timm_pretrained_cfg():
    timm = pytest.importorskip("timm")
    m = timm.create_model("resnet10t", num_classes=3, pretrained=False).eval()
    inv = ForwardPassInversion(m, input_shape=(3, 32, 32), normalize="auto")
    assert inv.adapter.normalize == (tuple(m.pretrained_cfg["mean"]), tuple(m.pretrained_cfg["std"]))
    x = inv.attribute(target=0, n_samples=2, input_range=BOX, seed=0, min_prob=0.4)  # an untrained net
    mean = torch.tensor(m.pretrained_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(m.pretrained_cfg["std"]).view(3, 1, 1)
    with torch.no_grad():
        assert float(m((x - mean) / std).softmax(1)[:, 0].min()) >= 0.4


@pytest.mark.parametrize("normalize, match", [
    (((0.1, 0.2), (1.0, 1.0)), "mean has 2 values but the input has 3 channel"),
    ((MEAN, (0.2, 0.0, 0.3)), "std must be positive"),
    ((MEAN,), "must be a pair"),
    ("imagenet", "must be None, \\(mean, std\\) or 'auto'"),
    ("auto", "pretrained_cfg"),
])
def test_bad_normalize_is_a_clear_error(nets, normalize, match):
    cnn, _ = nets
    with pytest.raises(ValueError, match=match):
        ForwardPassInversion(cnn, input_shape=(3, 16, 16), normalize=normalize)


def test_split_points_use_the_callers_names(nets):
    cnn, _ = nets
    inv = GeneralizedInversion(cnn, input_shape=(3, 16, 16), normalize=(MEAN, STD), split_points=["3"], lp=False)
    assert any(b.calls[0].name == "3" for b in inv.plan.blocks)
