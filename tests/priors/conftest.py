import pytest

from captum_invert.models import TrainConfig, train
from captum_invert.models.cnn import bn_cnn, train_judge


@pytest.fixture(scope="session")
def digit_cnn(digits):
    """A small BatchNorm CNN trained on the digits (cached)."""
    return train(bn_cnn(width=8), digits[0], TrainConfig(epochs=6, lr=2e-3, optimizer="adam"), progress=False)


@pytest.fixture(scope="session")
def digit_judge(digits):
    """The judge with a "no digit" class, trained on the digits (cached)."""
    return train_judge(digits[0], epochs=8)
