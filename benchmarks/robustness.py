"""Verification rates on fully connected nets that the tests do not train: other widths,
depths, activations, output activations and training recipes, on the MNIST split (or digits).

For each net: test accuracy, then the share of 200 class targets (every class) verified by
BackwardPassInversion, ForwardPassInversion and GeneralizedInversion with their defaults,
without and with input_range=(0, 1), the seconds each took, and the reasons of failures.

Usage: python benchmarks/robustness.py [--data-root DIR] [--epochs 5]
"""
from __future__ import annotations

import time

import torch

from captum_invert import BackwardPassInversion, ForwardPassInversion, GeneralizedInversion, InversionError
from captum_invert.models import FCNN, TrainConfig, accuracy, train

from _common import data, parser  # noqa: E402 (benchmarks/ is on sys.path when run as a script)

#: (widths, activation, activation on the logits, optimizer, learning rate)
NETS = [
    ((784, 300, 100, 10), "tanh", False, "sgd", 1e-2),
    ((784, 300, 100, 10), "elu", True, "adam", 1e-3),
    ((784, 256, 256, 256, 256, 256, 256, 10), "selu", True, "adam", 1e-3),
    ((784, 200, 10), "sigmoid", False, "sgd", 1e-1),
    ((784, 400, 200, 100, 50, 10), "leaky_relu", True, "adam", 3e-3),
    ((784, 1000, 10), "selu", True, "sgd", 1e-3),
]


def main():
    ap = parser(__doc__)
    ap.add_argument("--epochs", type=int, default=5)
    args = ap.parse_args()
    name, tr, te = data(args)
    labels = [i % 10 for i in range(200)]
    print(f"data: {name}\n")
    print("| net | accuracy | method | verified | in (0,1) | s, s (box) |")
    print("|---|---|---|---|---|---|")
    reasons = []
    for widths, act, final, opt, lr in NETS:
        torch.manual_seed(0)
        net = train(FCNN(widths, act, final, input_shape=(1, 28, 28)), tr,
                    TrainConfig(epochs=args.epochs, lr=lr, optimizer=opt), progress=False)
        tag = f"{'-'.join(map(str, widths))} {act}{' (+ on logits)' if final else ''}, {opt} {lr:g}"
        for cls in (BackwardPassInversion, ForwardPassInversion, GeneralizedInversion):
            cells = []
            for rng in (None, (0.0, 1.0)):
                t = time.perf_counter()
                try:
                    n = len(cls(net).attribute(target=labels, seed=0, input_range=rng))
                except InversionError as e:
                    n = e.n_verified
                    reasons.append(f"{tag}, {cls.__name__}{' in (0,1)' if rng else ''}: {e.reasons}")
                cells.append((100 * n / len(labels), time.perf_counter() - t))
            print(f"| {tag} | {accuracy(net, te):.3f} | {cls.__name__} | {cells[0][0]:.1f}% | {cells[1][0]:.1f}% "
                  f"| {cells[0][1]:.1f}, {cells[1][1]:.1f} |", flush=True)
    print("\nfailures:" if reasons else "\nno failures")
    for r in reasons:
        print("-", r)


if __name__ == "__main__":
    main()
