"""Datasets for training and inverting small classifiers.

Every loader returns a :class:`torch.utils.data.TensorDataset` of ``(images, labels)`` where
``images`` is a float32 tensor of shape ``(N, 1, H, W)`` with values in ``[0, 1]`` and ``labels``
is an int64 tensor of shape ``(N,)``.

- :func:`load_digits`: scikit-learn's bundled 8x8 digits (1,797 images), the offline default;
  upsampled to 28x28 by default so that the MNIST architectures apply unchanged.
- :func:`load_mnist_idx`: a directory holding MNIST IDX files (gzip or raw).
- :func:`load_mnist`: torchvision's MNIST (downloads when ``download=True``).
- :func:`load_images`: the user's own images: an image folder (torchvision's ``ImageFolder``
  layout) or a tensor file.
- :func:`colour_digits`: any of these as ``(N, 3, S, S)`` colour images: random foreground and
  background colours and textures, for the colour test nets.
"""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = ["load_digits", "load_mnist", "load_mnist_idx", "split", "load_dataset", "load_images", "DATA_ENV",
           "colour_digits", "colour_images"]

#: Environment variable naming a directory of MNIST IDX files (used by the CLI and tests).
DATA_ENV = "CAPTUM_INVERT_MNIST"


def _check_split(which: str) -> None:
    if which not in ("train", "test", "all"):
        raise ValueError(f"`which` must be 'train', 'test' or 'all', got {which!r}")


def split(
    dataset: TensorDataset, n_train: int, seed: int = 0
) -> Tuple[TensorDataset, TensorDataset]:
    """Split a dataset into a training part of ``n_train`` items and the rest, with a fixed seed.

    Args:
        dataset (TensorDataset): ``(images, labels)``.
        n_train (int): number of items in the first part, ``0 < n_train < len(dataset)``.
        seed (int): seed of the permutation.

    Returns:
        (TensorDataset, TensorDataset): the training part and the held-out part.
    """
    n = len(dataset)
    if not 0 < n_train < n:
        raise ValueError(f"`n_train` must be in (0, {n}), got {n_train}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    x, y = dataset.tensors
    return (
        TensorDataset(x[perm[:n_train]], y[perm[:n_train]]),
        TensorDataset(x[perm[n_train:]], y[perm[n_train:]]),
    )


def load_digits(which: str = "all", image_size: int = 28, n_train: int = 1500, seed: int = 0):
    """scikit-learn's bundled handwritten digits (offline), as ``(N, 1, S, S)`` in ``[0, 1]``.

    Args:
        which (str): ``'train'`` (the first ``n_train`` of a seeded permutation), ``'test'``
            (the rest) or ``'all'`` (1,797 images).
        image_size (int): side of the returned images; the native 8x8 images are resized
            bilinearly when it differs from 8 (28 by default, MNIST's size).
        n_train (int): size of the training part.
        seed (int): seed of the train/test permutation.

    Returns:
        TensorDataset: ``(images, labels)``, images of shape ``(N, 1, image_size, image_size)``.
    """
    _check_split(which)
    if not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"`image_size` must be an int >= 8, got {image_size!r}")
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        x = torch.nn.functional.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False
        ).clamp_(0.0, 1.0)
    ds = TensorDataset(x, torch.tensor(d.target, dtype=torch.int64))
    return ds if which == "all" else split(ds, n_train, seed)[0 if which == "train" else 1]


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values, found {arr.size}")
    return arr.reshape(shape)


def _find(root: Path, stem: str) -> Optional[Path]:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def load_mnist_idx(
    root, which: str = "train", n_train: int = 8000, seed: int = 0
) -> TensorDataset:
    """MNIST from a directory of IDX files, as ``(N, 1, 28, 28)`` in ``[0, 1]``.

    The directory may hold the training split (``train-images-idx3-ubyte[.gz]``,
    ``train-labels-idx1-ubyte[.gz]``) and/or the test split (``t10k-*``). When it holds both,
    ``which`` picks the official split. When it holds only the 10,000-image test split, that split
    is divided with a fixed seed: ``'train'`` returns ``n_train`` images (8,000 by default) and
    ``'test'`` the held-out rest.

    Args:
        root (str or Path): the directory.
        which (str): ``'train'``, ``'test'`` or ``'all'`` (every image found).
        n_train (int): size of the training part when only one split is present.
        seed (int): seed of that division.

    Returns:
        TensorDataset: ``(images, labels)``.
    """
    _check_split(which)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"`root`: no such directory: {root}")
    splits = {}
    for prefix in ("train", "t10k"):
        img, lab = _find(root, f"{prefix}-images-idx3-ubyte"), _find(root, f"{prefix}-labels-idx1-ubyte")
        if img and lab:
            x = torch.from_numpy(_read_idx(img).copy()).float().div_(255.0).unsqueeze(1)
            y = torch.from_numpy(_read_idx(lab).astype(np.int64))
            if len(x) != len(y):
                raise ValueError(f"{img} and {lab} hold different numbers of items")
            splits[prefix] = TensorDataset(x, y)
    if not splits:
        raise FileNotFoundError(
            f"`root`: {root} holds no MNIST IDX pair (train-/t10k-images-idx3-ubyte[.gz] "
            "with the matching labels file)"
        )
    if which == "all":
        xs, ys = zip(*(s.tensors for s in splits.values()))
        return TensorDataset(torch.cat(xs), torch.cat(ys))
    if len(splits) == 2:
        return splits["train" if which == "train" else "t10k"]
    (only,) = splits.values()
    return split(only, n_train, seed)[0 if which == "train" else 1]


def load_mnist(root, which: str = "train", download: bool = False) -> TensorDataset:
    """MNIST through torchvision (needs internet when ``download=True`` and the files are absent).

    Args:
        root (str or Path): torchvision's root directory.
        which (str): ``'train'`` or ``'test'``.
        download (bool): let torchvision download the files.

    Returns:
        TensorDataset: ``(images, labels)``, images ``(N, 1, 28, 28)`` in ``[0, 1]``.
    """
    if which not in ("train", "test"):
        raise ValueError(f"`which` must be 'train' or 'test', got {which!r}")
    from torchvision.datasets import MNIST

    ds = MNIST(str(root), train=which == "train", download=download)
    x = ds.data.float().div_(255.0).unsqueeze(1)
    return TensorDataset(x, ds.targets.long())


def load_dataset(name: str = "digits", which: str = "train", data_root=None) -> TensorDataset:
    """Load ``'digits'`` (offline) or ``'mnist'`` by name, or the user's own labelled images: an
    image folder or a tensor file (:func:`load_images`).

    For ``'mnist'``, ``data_root`` (or the ``CAPTUM_INVERT_MNIST`` environment variable) names a
    directory of IDX files; torchvision's layout (``root/MNIST/raw``) is found too.

    Args:
        name (str): ``'digits'``, ``'mnist'``, or a path for :func:`load_images`.
        which (str): ``'train'``, ``'test'`` or ``'all'``.
        data_root (str or Path, optional): MNIST directory.

    Returns:
        TensorDataset: ``(images, labels)``.
    """
    if name == "digits":
        return load_digits(which)
    if name != "mnist":
        if os.path.exists(str(name)):
            return load_images(name, which, labels_required=True)
        raise ValueError(f"`dataset` must be 'digits', 'mnist', an image folder (one sub-directory per class) or "
                         f"a tensor file (.pt, .safetensors, .npz), got {name!r}, which does not exist")
    root = data_root or os.environ.get(DATA_ENV)
    if root is None:
        raise ValueError(
            f"`data_root` is required for MNIST (or set {DATA_ENV}); "
            "offline, use the bundled dataset 'digits'"
        )
    root = Path(root)
    if (root / "MNIST" / "raw").is_dir():
        root = root / "MNIST" / "raw"
    return load_mnist_idx(root, which)


IMAGE_KEYS, LABEL_KEYS = ("inputs", "images", "x", "data"), ("labels", "targets", "y")


def _split_part(ds: TensorDataset, which: str) -> TensorDataset:
    if which == "all" or len(ds) < 2:
        return ds
    train, test = split(ds, max(1, min(len(ds) - 1, int(round(0.8 * len(ds))))), seed=0)
    return train if which == "train" else test


def _read_tensors(p: Path):
    """``(images, labels or None)`` of a tensor file."""
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(p))
    elif suffix == ".npz":
        with np.load(p) as z:
            obj = {k: torch.from_numpy(z[k]) for k in z.files}
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"`data` {str(p)!r}: not a tensor file torch.load reads with weights_only=True "
                             f"({type(e).__name__}: {str(e)[:200]})") from e
    if isinstance(obj, torch.Tensor):
        return obj, None
    if isinstance(obj, (tuple, list)) and len(obj) in (1, 2) and all(isinstance(t, torch.Tensor) for t in obj):
        return obj[0], (obj[1] if len(obj) == 2 else None)
    if isinstance(obj, dict):
        x = next((obj[k] for k in IMAGE_KEYS if isinstance(obj.get(k), torch.Tensor)), None)
        y = next((obj[k] for k in LABEL_KEYS if isinstance(obj.get(k), torch.Tensor)), None)
        if x is not None:
            return x, y
    keys = f" (keys: {sorted(obj)})" if isinstance(obj, dict) else f" ({type(obj).__name__})"
    raise ValueError(f"`data` {str(p)!r}: expected a tensor of images, a pair (images, labels) or a dict with "
                     f"one of the keys {IMAGE_KEYS} and optionally one of {LABEL_KEYS}{keys}")


def _read_folder(p: Path, image_shape):
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor, resize

    try:
        folder = ImageFolder(str(p))  # the class layout only; the images are read below
    except (FileNotFoundError, RuntimeError) as e:
        raise ValueError(f"`data` {str(p)!r}: not an image folder ({e}); the layout is one sub-directory of "
                         "images per class, e.g. DIR/cat/1.png, DIR/dog/2.png") from e
    grey = image_shape[0] == 1 if image_shape else None
    imgs, labels = [], []
    for path, label in folder.samples:
        with Image.open(path) as im:
            if grey is None:
                grey = im.mode in ("L", "I", "I;16", "1")
            t = pil_to_tensor(im.convert("L" if grey else "RGB"))
        if image_shape:
            t = resize(t, list(image_shape[1:]), antialias=True)
        imgs.append(t)
        labels.append(label)
    sizes = {tuple(t.shape) for t in imgs}
    if len(sizes) > 1:
        raise ValueError(f"`data` {str(p)!r}: the images have different sizes ({sorted(sizes)[:3]}, ...); give the "
                         "model's input shape (--input-shape / image_shape=) to resize them")
    x = torch.stack(imgs).float().div_(255.0) if imgs else torch.zeros(0)
    return x, torch.tensor(labels, dtype=torch.int64), folder.classes


def load_images(path, which: str = "all", image_shape=None, labels_required: bool = False) -> TensorDataset:
    """The user's own images as ``(images, labels)``, float32 in ``[0, 1]`` (image files) or as
    stored (tensor files).

    - **An image folder**, torchvision's ``ImageFolder`` layout: one sub-directory per class
      (classes numbered in sorted order). With ``train/`` and ``test/`` (or ``val/``)
      sub-directories, ``which`` picks one.
    - **A tensor file**: ``.pt`` / ``.pth`` (read with ``weights_only=True``), ``.safetensors`` or
      ``.npz``, holding a tensor of images, a pair ``(images, labels)`` or a dict with the keys
      ``inputs`` / ``images`` / ``x`` and ``labels`` / ``targets`` / ``y``.

    Without split sub-directories, ``which='train'`` / ``'test'`` is a fixed 80 / 20 split
    (seed 0) and ``'all'`` everything.

    Args:
        path (str or Path): the folder or file.
        which (str): ``'train'``, ``'test'`` or ``'all'``.
        image_shape (tuple of int, optional): ``(C, H, W)``: folder images are converted to C
            channels (1: grey, 3: RGB) and resized to ``H x W``. Default: their own size, grey
            only if every image is.
        labels_required (bool): raise when the file has no labels (else they are -1).

    Returns:
        TensorDataset: ``(images (N, C, H, W), labels (N,) int64)``.
    """
    _check_split(which)
    p = Path(path)
    if p.is_dir():
        subs = {"train": ("train",), "test": ("test", "val"), "all": ()}[which]
        split_dir = next((p / s for s in subs if (p / s).is_dir()), None)
        x, y, _ = _read_folder(split_dir or p, image_shape)
        ds = TensorDataset(x, y)
        if split_dir is None:
            ds = _split_part(ds, which)
        if not len(ds):
            raise ValueError(f"`data` {str(p)!r}: no images found")
        return ds
    if not p.is_file():
        raise ValueError(f"`data` {str(p)!r} does not exist: give an image folder or a tensor file")
    x, y = _read_tensors(p)
    if y is None:
        if labels_required:
            raise ValueError(f"`data` {str(p)!r} holds images but no labels; store a pair (images, labels) or a "
                             f"dict with one of the keys {LABEL_KEYS}")
        y = torch.full((len(x),), -1, dtype=torch.int64)
    if len(y) != len(x):
        raise ValueError(f"`data` {str(p)!r}: {len(x)} images but {len(y)} labels")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    return _split_part(TensorDataset(x.float(), y.long()), which)


def _smooth_noise(n: int, size: int, cells: int, gen: torch.Generator) -> torch.Tensor:
    """``(n, 1, size, size)`` smooth noise in ``[0, 1]``: a ``cells x cells`` random grid,
    upsampled bicubically."""
    g = torch.rand((n, 1, cells, cells), generator=gen)
    up = torch.nn.functional.interpolate(g, size=(size, size), mode="bicubic", align_corners=False)
    return up.clamp(0, 1)


def colour_images(gray: torch.Tensor, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Colour versions ``(N, 3, size, size)`` in ``[0, 1]`` of grey images ``(N, 1, H, W)``:
    each image is resized to ``size`` (bilinear), then its ink takes a random foreground colour
    and the rest a random background colour at least 0.5 away (L2 in RGB), each modulated by
    its own random smooth texture (a coarse grid of noise, up to 30% of the colour) so that a
    classifier must read the shape, not the colours.

    Args:
        gray (Tensor): ``(N, 1, H, W)`` images in ``[0, 1]`` (ink bright).
        size (int): output side.
        seed (int): seed of the colours and textures.

    Returns:
        Tensor: ``(N, 3, size, size)`` float32.
    """
    if not isinstance(gray, torch.Tensor) or gray.dim() != 4 or gray.shape[1] != 1:
        raise ValueError(f"`gray` must be a (N, 1, H, W) tensor, got {getattr(gray, 'shape', type(gray))}")
    gen = torch.Generator().manual_seed(seed)
    n = len(gray)
    a = torch.nn.functional.interpolate(gray.float(), size=(size, size), mode="bilinear", align_corners=False)
    a = a.clamp(0, 1)
    fg = torch.rand((n, 3), generator=gen)
    bg = torch.rand((n, 3), generator=gen)
    for _ in range(20):  # redraw backgrounds too close to their foreground
        close = (fg - bg).norm(dim=1) < 0.5
        if not bool(close.any()):
            break
        bg[close] = torch.rand((int(close.sum()), 3), generator=gen)
    tex_f = 1 - 0.3 * _smooth_noise(n, size, 4, gen) * torch.rand((n, 1, 1, 1), generator=gen)
    tex_b = 1 - 0.3 * _smooth_noise(n, size, 6, gen) * torch.rand((n, 1, 1, 1), generator=gen)
    img = a * fg[:, :, None, None] * tex_f + (1 - a) * bg[:, :, None, None] * tex_b
    return img.clamp(0, 1)


def colour_digits(data: TensorDataset, size: int = 32, seed: int = 0) -> TensorDataset:
    """A digits dataset (grey, e.g. from :func:`load_dataset`) as colour images
    ``(N, 3, size, size)``, see :func:`colour_images`; the labels are kept.

    Args:
        data (TensorDataset): ``(images (N, 1, H, W) in [0, 1], labels (N,))``.
        size (int): output side.
        seed (int): seed of the colours.

    Returns:
        TensorDataset: ``(images (N, 3, size, size), labels (N,))``.
    """
    x, y = data.tensors
    return TensorDataset(colour_images(x, size, seed), y)
