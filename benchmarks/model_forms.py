"""A real ONNX classifier from outside the project, inverted in pixel space with its own
normalisation: PaddleOCR's text-orientation classifier (ch_ppocr_mobile_v2.0_cls, 2 classes,
3x48x192, MobileNetV3 with hard-swish and squeeze-and-excitation blocks), shipped in the
rapidocr-onnxruntime 1.4.4 wheel (fetched with pip into the cache on first use).

Its preprocessing is pixels in [0, 1], then (x - 0.5) / 0.5, so the methods get
``normalize=(0.5, 0.5)`` and ``input_range=(0, 1)``. Per class and method, in one run:
ms per verified sample, verified share under the converted module and under onnxruntime, and
projected Adam on log p (the usual hand-written attack: 200 steps, lr 0.01, uniform starts in the
box, no early stop) as the peer; then ForwardPassInversion with ``prior='auto'`` (the data-free
prior: what the classifier takes for text). Writes ``docs/figures/text_orientation.png`` (rows: method x class).

    python benchmarks/model_forms.py [--per-class 8] [--figure docs/figures/text_orientation.png]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import torch
from torch import nn

from captum_invert import ForwardPassInversion, GeneralizedInversion, InversionError
from captum_invert.blocks.normalize import Normalize
from captum_invert.checkpoint import load_model, onnx_probabilities
from captum_invert.hardening import projected_adam_attack
from captum_invert.models.training import cache_dir

NAME = "ch_ppocr_mobile_v2.0_cls_infer.onnx"
SHAPE = (3, 48, 192)


def fetch() -> Path:
    d = cache_dir() / "onnx"
    path = d / NAME
    if not path.is_file():
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(d),
                        "rapidocr-onnxruntime==1.4.4"], check=True)
        wheel = next(d.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            path.write_bytes(z.read(f"rapidocr_onnxruntime/models/{NAME}"))
        os.remove(wheel)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--adam-steps", type=int, default=200)
    ap.add_argument("--prior-per-class", type=int, default=2, help="samples per class with prior='auto'")
    ap.add_argument("--figure", default="docs/figures/text_orientation.png")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    path = fetch()
    net, info = load_model(str(path))
    norm = Normalize(0.5, 0.5, SHAPE)
    shown = []
    print(f"{NAME}: sha256 {info['sha256'][:16]}..., {args.per_class} samples per class, pixels in [0, 1], normalize (0.5, 0.5)")
    print(f"{'method':<24}{'class':>6}{'verified':>10}{'onnxruntime':>13}{'ms/verified':>13}{'ratio':>8}")
    peers = {}
    for name in ("projected Adam", "ForwardPassInversion", "GeneralizedInversion", "Forward, prior='auto'"):
        for c in (0, 1):
            n = args.prior_per_class if "prior" in name else args.per_class
            if n < 1:
                continue
            t0 = time.perf_counter()
            if name == "projected Adam":
                x = projected_adam_attack(nn.Sequential(norm, net), torch.full((n,), c), SHAPE,
                                          steps=args.adam_steps, seed=c)
            else:
                cls = ForwardPassInversion if name.startswith("Forward") else GeneralizedInversion
                inv = cls(net, input_shape=SHAPE, normalize=(0.5, 0.5))
                kw = {"prior": "auto"} if "prior" in name else {}
                try:
                    x = inv.attribute(target=c, n_samples=n, seed=c, input_range=(0.0, 1.0), **kw)
                except InversionError as e:
                    x = e.partial
            sec = time.perf_counter() - t0
            with torch.no_grad():
                p_torch = nn.Sequential(norm, net)(x).double()[:, c] if len(x) else torch.zeros(0)
            p_ort = onnx_probabilities(str(path), norm(x))[:, c] if len(x) else torch.zeros(0)
            ok, ok_ort = int((p_torch >= 0.9).sum()), int((p_ort >= 0.9).sum())
            ms = 1000 * sec / max(ok_ort, 1)
            if name == "projected Adam":
                peers[c] = ms
            print(f"{name:<24}{c:>6}{ok:>7}/{n:<2}{ok_ort:>10}/{n:<2}{ms:>13.0f}{ms / peers[c]:>8.2f}")
            if len(x):
                shown.append((f"{name.split('Inversion')[0]}\nclass {c}", x[:4], p_ort[:4].float()))
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(shown), 4, figsize=(4 * 2.4, len(shown) * 0.9))
        for r, (label, xs, ps) in enumerate(shown):
            for k in range(4):
                ax = axes[r, k]
                ax.axis("off")
                if k < len(xs):
                    ax.imshow(xs[k].permute(1, 2, 0).clamp(0, 1).numpy())
                    ax.set_title(f"p={float(ps[k]):.3f}", fontsize=7)
            axes[r, 0].text(-0.05, 0.5, label, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=7)
        fig.suptitle("PaddleOCR text-orientation classifier (ONNX), inverted in pixel space [0, 1]; "
                     "p under onnxruntime", fontsize=8)
        fig.tight_layout(rect=(0.12, 0, 1, 0.95))
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=110)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
