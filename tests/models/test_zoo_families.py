"""Every zoo family (timm and torchvision: ResNet, MobileNet, EfficientNet, ConvNeXt, ViT, DeiT
distilled, MLP-Mixer, Swin, BatchNorm MLP), tiny and trained for one epoch on the digits, is inverted by
ForwardPassInversion and GeneralizedInversion towards a target that is reachable by
construction: the class distribution the model gives a real digit. Every returned sample
verifies on the model. (The trained zoo's figures are in ``benchmarks/zoo.py``.)"""
import pytest
import torch
from torch.utils.data import TensorDataset

from captum_invert import ForwardPassInversion, GeneralizedInversion
from captum_invert.models import TrainConfig, train
from captum_invert.models.zoo import ZOO, pad_to_32, recalibrate_batchnorm, zoo_model


@pytest.fixture(scope="module")
def digits32(digits):
    x, y = digits[0].tensors
    return TensorDataset(pad_to_32(x), y)


@pytest.mark.parametrize("name", list(ZOO))
def test_family_reaches_a_real_digits_distribution(name, digits32):
    # one epoch (24 steps, cached): random SE gates (MobileNetV3, EfficientNet) saturate
    m = train(zoo_model(name, tiny=True), digits32, TrainConfig(epochs=1, lr=3e-3, optimizer="adamw"),
              progress=False)
    images = digits32.tensors[0][:64]
    recalibrate_batchnorm(m, digits32.tensors[0])
    with torch.no_grad():
        p = m(images).softmax(1)
    # the target: the distribution of the digit whose output is farthest from the others' mean
    target = p[(p - p.mean(0)).abs().amax(1).argmax()]
    for cls in (ForwardPassInversion, GeneralizedInversion):
        inv = cls(m)
        assert inv.input_shape == (1, 32, 32)
        x, d = inv.attribute(target=target, n_samples=2, seed=0, return_convergence_delta=True)
        with torch.no_grad():
            got = m(x).softmax(1)
        assert float((got - target).abs().amax()) <= 0.02, (name, cls.__name__)
        assert torch.allclose(d, (got - target).abs().amax(1).double(), atol=1e-5)
