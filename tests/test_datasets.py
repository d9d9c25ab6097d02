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


def _image_folder(root, n_per_class=10, classes=("a", "b", "c"), size=28, mode="L"):
    from PIL import Image

    x, y = load_digits("train").tensors
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i, img in enumerate(x[y == ci][:n_per_class]):
            arr = (img[0] * 255).round().to(torch.uint8).numpy()
            im = Image.fromarray(arr, mode="L")
            (im if mode == "L" else im.convert("RGB")).resize((size, size)).save(root / c / f"{i}.png")
    return root


def test_load_images_from_a_folder_and_tensor_files(tmp_path):
    from captum_invert.datasets import load_images

    root = _image_folder(tmp_path / "imgs")
    ds = load_images(root)
    x, y = ds.tensors
    assert x.shape == (30, 1, 28, 28) and x.dtype == torch.float32 and float(x.max()) <= 1.0
    assert sorted(y.tolist()) == sorted([0] * 10 + [1] * 10 + [2] * 10)
    ref = load_digits("train").tensors[0][load_digits("train").tensors[1] == 1][0]
    assert float((x[y == 1] - ref).abs().amax((1, 2, 3)).min()) < 3 / 255  # the same pixels
    tr, te = load_images(root, "train"), load_images(root, "test")
    assert len(tr) == 24 and len(te) == 6  # a fixed 80/20 split without train/ and test/
    rgb = load_images(root, image_shape=(3, 16, 16)).tensors[0]
    assert rgb.shape == (30, 3, 16, 16)
    torch.save((x, y), tmp_path / "pair.pt")
    assert torch.equal(load_images(tmp_path / "pair.pt").tensors[0], x)
    from safetensors.torch import save_file

    save_file({"inputs": x.contiguous()}, str(tmp_path / "s.safetensors"))  # what `invert` writes
    assert bool((load_images(tmp_path / "s.safetensors").tensors[1] == -1).all())
    with pytest.raises(ValueError, match="no labels"):
        load_images(tmp_path / "s.safetensors", labels_required=True)
    with pytest.raises(ValueError, match="does not exist"):
        load_images(tmp_path / "nothing")
    with pytest.raises(ValueError, match="not an image folder"):
        load_images(tmp_path / "imgs" / "a")  # images, but no class sub-directories
    torch.save({"w": x}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="keys"):
        load_images(tmp_path / "odd.pt")


def test_load_images_uses_split_directories(tmp_path):
    from captum_invert.datasets import load_dataset

    _image_folder(tmp_path / "d" / "train", n_per_class=6)
    _image_folder(tmp_path / "d" / "test", n_per_class=2)
    assert len(load_dataset(str(tmp_path / "d"), "train")) == 18
    assert len(load_dataset(str(tmp_path / "d"), "test")) == 6
