"""GeneralizedInversion against ForwardPassInversion on the small ViT (depth 4, dim 96, 4x4
patches): verified % on every class and diversity (mean pairwise L2 of 16 samples of one
target, averaged over the classes), same starts, same n_samples, one run.

Usage: python benchmarks/generalized.py [--data-root DIR]
"""
from __future__ import annotations

import time

import torch

from captum_invert import ForwardPassInversion, GeneralizedInversion, InversionError
from captum_invert.metrics import mean_pairwise_distance
from captum_invert.models import TrainConfig, accuracy, train, vit_mnist_small

from _common import data, parser  # noqa: E402 (benchmarks/ is on sys.path when run as a script)


def run(inv, **kw):
    try:
        return inv.attribute(**kw), None
    except InversionError as e:
        return e.result, e.verified


def main():
    ap = parser(__doc__)
    ap.add_argument("--per-class", type=int, default=16)
    args = ap.parse_args()
    name, tr, te = data(args)
    vit = train(vit_mnist_small(), tr, TrainConfig(epochs=20, lr=1e-3, optimizer="adamw", batch_size=64))
    print(f"data: {name}; ViT accuracy {accuracy(vit, te):.3f}")
    gen = GeneralizedInversion(vit)
    print(gen.plan)
    rows = []
    for label, inv in (("GeneralizedInversion", gen), ("ForwardPassInversion", ForwardPassInversion(vit))):
        n_ok, n, div, t = 0, 0, [], 0.0
        for c in range(10):
            t0 = time.perf_counter()
            x, ver = run(inv, target=c, n_samples=args.per_class, seed=c, allow_unverified=False)
            t += time.perf_counter() - t0
            with torch.no_grad():
                p = torch.softmax(vit(x), 1)[:, c]
            n_ok += int((p >= 0.9).sum())
            n += len(x)
            div.append(mean_pairwise_distance(x))
        rows.append((label, 100 * n_ok / n, sum(div) / len(div), t / n * 1e3))
    print("\n| method | verified % | mean pairwise L2 (16 samples / class) | ms / sample |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.2f} | {r[3]:.1f} |")
    print(f"\ndiversity ratio Generalized / Forward: {rows[0][2] / rows[1][2]:.3f}")


if __name__ == "__main__":
    main()
