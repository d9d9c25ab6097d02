import gzip
import struct

import numpy as np
import pytest
import torch

from captum_invert.datasets import load_dataset, load_digits, load_mnist_idx, split


def _write_idx(path, arr, gz=True):
    arr = np.asarray(arr, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    data = header + arr.tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_idx_reader_round_trips_and_splits(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(50, 28, 28))
    labs = rng.integers(0, 10, size=50)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labs, gz=False)
    every = load_mnist_idx(tmp_path, "all")
    x, y = every.tensors
    assert x.shape == (50, 1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x[:, 0] * 255, torch.tensor(imgs, dtype=torch.float32))
    assert torch.equal(y, torch.tensor(labs))
    tr, te = load_mnist_idx(tmp_path, "train", n_train=40), load_mnist_idx(tmp_path, "test", n_train=40)
    assert len(tr) == 40 and len(te) == 10
    # a partition: every image exactly once, same split every time
    both = torch.cat([tr.tensors[0], te.tensors[0]]).flatten(1)
    assert torch.allclose(both.sum(0), x.flatten(1).sum(0))
    assert torch.equal(load_mnist_idx(tmp_path, "train", n_train=40).tensors[0], tr.tensors[0])


def test_idx_reader_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no MNIST IDX"):
        load_mnist_idx(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x03" + b"\x00" * 12)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01" + b"\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="unsigned-byte"):
        load_mnist_idx(tmp_path)
    with pytest.raises(ValueError, match="`which`"):
        load_mnist_idx(tmp_path, "val")


def test_real_mnist_split(mnist):
    tr, te = mnist
    assert tr.tensors[0].shape == (8000, 1, 28, 28) and te.tensors[0].shape == (2000, 1, 28, 28)
    assert 0.0 <= float(tr.tensors[0].min()) and float(tr.tensors[0].max()) <= 1.0
    assert set(tr.tensors[1].unique().tolist()) == set(range(10))


def test_digits_default_is_offline_28x28(monkeypatch):
    monkeypatch.delenv("CAPTUM_INVERT_MNIST", raising=False)
    tr, te = load_digits("train"), load_digits("test")
    assert tr.tensors[0].shape == (1500, 1, 28, 28) and len(te) == 297
    assert float(tr.tensors[0].min()) >= 0 and float(tr.tensors[0].max()) <= 1
    assert load_digits("all", image_size=8).tensors[0].shape == (1797, 1, 8, 8)
    with pytest.raises(ValueError, match="`dataset`"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="`data_root`"):
        load_dataset("mnist", data_root=None)


def test_split_rejects_bad_sizes():
    ds = load_digits("all", image_size=8)
    with pytest.raises(ValueError, match="`n_train`"):
        split(ds, 0)


def test_colour_digits_keep_the_shape_in_random_colours():
    from captum_invert.datasets import colour_digits, colour_images

    gray = torch.zeros(50, 1, 28, 28)
    gray[:, :, 8:20, 12:16] = 1.0  # a bar of ink
    x = colour_images(gray, 32, seed=3)
    assert x.shape == (50, 3, 32, 32) and x.min() >= 0 and x.max() <= 1
    ink = x[:, :, 12:20, 15:17].mean((2, 3))
    bg = x[:, :, :4, :4].mean((2, 3))
    # every image: ink and background differ by at least the drawn gap, less the texture's 30%
    assert ((ink - bg).norm(dim=1) > 0.5 * 0.7 - 0.05).all()
    # colours vary across images (a classifier cannot read the class from them)
    assert bg.std(0).min() > 0.15
    assert torch.equal(colour_images(gray, 32, seed=3), x)
    d = colour_digits(torch.utils.data.TensorDataset(gray, torch.arange(50)), size=32)
    assert d.tensors[0].shape == (50, 3, 32, 32) and torch.equal(d.tensors[1], torch.arange(50))
    with pytest.raises(ValueError, match="`gray`"):
        colour_images(torch.zeros(2, 3, 28, 28))
