import pytest
import torch
from torch import nn

from captum_invert.datasets import load_digits
from captum_invert.models import (FCNN, MLP, SLP, TrainConfig, accuracy, invertible_base,
                                  invertible_no_activations, invertible_small, seed_fcnn, train)


def test_seed_nets_have_a_selu_after_every_linear():
    for depth, widths in [(1, [784, 10]), (2, [784, 128, 10]), (6, [784, 512, 256, 128, 64, 32, 10])]:
        m = seed_fcnn(depth)
        lin = [l for l in m if isinstance(l, nn.Linear)]
        assert [l.in_features for l in lin] + [lin[-1].out_features] == widths
        assert isinstance(m[-1], nn.SELU) and sum(isinstance(l, nn.SELU) for l in m) == depth
        assert m(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_seed_002_and_001_models():
    mlp = MLP()
    assert [l.out_features for l in mlp if isinstance(l, nn.Linear)] == [30, 30, 10]
    assert all(l.negative_slope == 0.01 for l in mlp if isinstance(l, nn.LeakyReLU))
    assert isinstance(SLP()[-1], nn.Linear)
    for net, blocks, acts in [(invertible_base(), 4, 4), (invertible_small(), 1, 1), (invertible_no_activations(), 4, 0)]:
        lin = [l for l in net if isinstance(l, nn.Linear)]
        assert len(lin) == blocks and all(l.weight.shape == (784, 784) for l in lin)
        assert sum(isinstance(l, nn.LeakyReLU) for l in net) == acts
    with pytest.raises(ValueError, match="`activation`"):
        FCNN((4, 2), "swish")
    with pytest.raises(ValueError, match="`depth`"):
        seed_fcnn(3)


def test_training_learns_and_the_cache_returns_the_same_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("CAPTUM_INVERT_CACHE", str(tmp_path))
    tr, te = load_digits("train", image_size=8), load_digits("test", image_size=8)
    cfg = TrainConfig(epochs=3, lr=1e-3, optimizer="adam")
    a = train(FCNN((64, 32, 10), "selu"), tr, cfg, progress=False)
    assert accuracy(a, te) > 0.8
    assert len(list(tmp_path.glob("weights-*.pt"))) == 1
    b = FCNN((64, 32, 10), "selu")
    b[1].weight.data.zero_()
    b = train(b, tr, cfg, progress=False)  # from the cache, not retrained
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    c = train(FCNN((64, 32, 10), "selu"), tr, TrainConfig(epochs=3, optimizer="adam", seed=1), progress=False)
    assert not torch.equal(a[1].weight, c[1].weight)
    assert len(list(tmp_path.glob("weights-*.pt"))) == 2
    assert not a.training


def test_cnn_models_and_no_digit_images():
    from captum_invert.models import NO_DIGIT, bn_cnn, judge_cnn, no_digit_images

    x = no_digit_images(21, generator=torch.Generator().manual_seed(0))
    assert x.shape == (21, 1, 28, 28) and x.min() >= 0 and x.max() <= 1
    assert torch.equal(x, no_digit_images(21, generator=torch.Generator().manual_seed(0)))
    # the seven kinds differ: noise is rough, blobs and flat images are smooth
    rough = (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))
    assert rough[0] > 5 * rough[6] and rough[3] < rough[0]
    assert bn_cnn()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert judge_cnn()(torch.zeros(2, 1, 28, 28)).shape == (2, NO_DIGIT + 1)
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn_cnn().modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in judge_cnn().modules())


def test_colour_nets_and_judges_take_colour_images():
    from captum_invert.models.colour import COLOUR_NETS, colour_judge, colour_model, colour_no_digit_images

    x = colour_no_digit_images(6, torch.Generator().manual_seed(0))
    assert x.shape == (6, 3, 32, 32) and x.min() >= 0 and x.max() <= 1
    for v in (0, 1):
        assert colour_judge(seed_arch=v).eval()(x).shape == (6, 11)
    assert set(COLOUR_NETS) >= {"resnet18 (torchvision)", "vit (timm)"}
    m = colour_model("resnet18 (torchvision)").eval()
    assert m.input_shape == (3, 32, 32) and m(x).shape == (6, 10)
    with pytest.raises(ValueError, match="`name`"):
        colour_model("alexnet")
