import os
from pathlib import Path

import pytest
import torch
from torch import nn

from captum_invert.datasets import DATA_ENV, load_digits, load_mnist_idx
from captum_invert.models import seed_fcnn, train


def _mnist_root():
    root = os.environ.get(DATA_ENV)
    if root and Path(root).is_dir():
        return Path(root)
    here = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    return here if here.is_dir() else None


@pytest.fixture(scope="session")
def digits():
    return load_digits("train"), load_digits("test")


@pytest.fixture(scope="session")
def digit_nets(digits):
    """The seed paper's 1-, 2- and 6-layer SELU nets trained on the digits (cached)."""
    torch.manual_seed(0)
    return {d: train(seed_fcnn(d), digits[0], progress=False) for d in (1, 2, 6)}


@pytest.fixture(scope="session")
def mnist_root():
    root = _mnist_root()
    if root is None:
        pytest.skip(f"MNIST IDX files not found (set {DATA_ENV})")
    return root


@pytest.fixture(scope="session")
def mnist(mnist_root):
    return load_mnist_idx(mnist_root, "train"), load_mnist_idx(mnist_root, "test")


@pytest.fixture(scope="session")
def mnist_nets(mnist):
    return {d: train(seed_fcnn(d), mnist[0], progress=False) for d in (1, 2, 6)}


@pytest.fixture(scope="session")
def small_vit(digits):
    """A small timm ViT (4x4 patches, dim 48, depth 2) trained on the digits (cached)."""
    from captum_invert.models import TrainConfig, vit_mnist

    return train(vit_mnist(embed_dim=48, depth=2, num_heads=3), digits[0],
                 TrainConfig(epochs=20, lr=1e-3, optimizer="adamw"), progress=False)


class OutsideCNN(nn.Module):  # written the way a user would, nothing from the project
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(6 * 7 * 7, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


@pytest.fixture
def user_factory(tmp_path, monkeypatch):
    """A module ``usernets`` written outside the project (in ``tmp_path``, on ``sys.path``) whose
    ``make()`` builds a small SELU MLP: the ``package.module:factory`` form of a user's model."""
    import importlib
    import sys
    import textwrap

    (tmp_path / "usernets.py").write_text(textwrap.dedent("""
        from torch import nn
        def make():
            return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.SELU(), nn.Linear(32, 10))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "usernets", raising=False)
    return importlib.import_module("usernets")


def fit_on_digits(net, steps=300):
    from captum_invert.datasets import load_dataset

    x, y = load_dataset("digits", "train").tensors
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(len(x), (128,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(net(x[i]), y[i]).backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="session")
def outside_cnn():
    """A small ReLU/MaxPool CNN written outside the project, trained briefly on the digits."""
    torch.manual_seed(0)
    return fit_on_digits(OutsideCNN())
