"""A generated family of hard (saturated) nets: every method at its defaults against projected
Adam, per net and per class, in one run.

The grid (issue 26): SELU, ELU, LeakyReLU(0.01) and GELU MLPs with the activation on the logits
too, 4-8 Linear layers, two width profiles (tapering from 400 by halves, or 256 throughout); Adam
at 3e-3, 1e-2 and 3e-2 for 5, 10 and 40 epochs; seeds 0, 1, 2; plus BatchNorm CNNs with an ELU or
SELU head (on the logits too). Configurations are drawn from it in the order of a seeded
shuffle (``random.Random(--draw)``; no hand-picking) until ``--nets`` nets have trained; nets
whose training diverged (test accuracy under 20%) are skipped and listed.

For every net:
- real-data reach per class: the share of held-out images of the class given p >= 0.9;
- for BackwardPassInversion (chains of invertible activations only: not GELU, not the CNNs),
  ForwardPassInversion and GeneralizedInversion at their defaults, unboxed and inside [0, 1],
  ``--per-class`` samples of every class that real data reach: the verified share, and the
  median over classes of the ms per verified sample;
- projected Adam on log p inside [0, 1] (``--adam-steps`` steps, lr 0.01, no early stop), the
  peer, on the same classes.

Then the distribution: per method and box, the mean, the worst net and the worst class.

Usage: python benchmarks/hard_family.py [--data-root DIR] [--nets 36] [--draw 0] [--per-class 5]
"""
from __future__ import annotations

import itertools
import json
import random
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from captum_invert import BackwardPassInversion, ForwardPassInversion, GeneralizedInversion, InversionError
from captum_invert.blocks.plan import model_mode_guard
from captum_invert.hardening import projected_adam_attack
from captum_invert.metrics import class_probabilities
from captum_invert.models import FCNN, TrainConfig, accuracy, train

from _common import data, parser  # noqa: E402

SHAPE = (1, 28, 28)
BOX = (0.0, 1.0)
ACTS = {"selu": nn.SELU, "elu": nn.ELU, "leaky_relu": lambda: nn.LeakyReLU(0.01), "gelu": nn.GELU}


def mlp(act: str, depth: int, profile: str) -> nn.Module:
    hidden = [max(16, 400 // 2 ** i) for i in range(depth - 1)] if profile == "taper" else [256] * (depth - 1)
    return FCNN((784, *hidden, 10), ACTS[act], True, input_shape=SHAPE)


def bn_cnn_head(act: str) -> nn.Module:
    a = ACTS[act]
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(16 * 7 * 7, 64), a(), nn.Linear(64, 10), a())
    net.input_shape = SHAPE
    return net


def grid():
    """Every configuration: ``(name, builder, TrainConfig)``."""
    out = []
    recipes = list(itertools.product((3e-3, 1e-2, 3e-2), (5, 10, 40), (0, 1, 2)))
    for act, depth, prof, (lr, ep, seed) in itertools.product(ACTS, range(4, 9), ("taper", "flat"), recipes):
        out.append((f"{act} MLP, {depth} layers, {prof}, Adam {lr:g} x {ep}, seed {seed}",
                    (lambda a=act, d=depth, p=prof: mlp(a, d, p)), TrainConfig(epochs=ep, lr=lr, optimizer="adam",
                                                                               seed=seed)))
    for act, (lr, ep, seed) in itertools.product(("elu", "selu"), recipes):
        out.append((f"BatchNorm CNN + {act} head, Adam {lr:g} x {ep}, seed {seed}", (lambda a=act: bn_cnn_head(a)),
                    TrainConfig(epochs=ep, lr=lr, optimizer="adam", seed=seed)))
    return out


def methods(name: str):
    analytic = "MLP" in name and not name.startswith("gelu")
    return [("backward", BackwardPassInversion)] * analytic + [("forward", ForwardPassInversion),
                                                               ("generalized", GeneralizedInversion)]


def reach(net, x, y):
    with model_mode_guard(net), torch.no_grad():
        p = class_probabilities(net, x)
    return [float((p[y == c, c] >= 0.9).double().mean()) for c in range(10)]


def run_class(fn, n):
    t0 = time.perf_counter()
    try:
        x = fn()
        k = len(x)
    except InversionError as e:
        k = e.n_verified
    return k / n, (1000 * (time.perf_counter() - t0) / k if k else float("inf"))


def main():
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--nets", type=int, default=36, help="configurations drawn from the grid")
    ap.add_argument("--draw", type=int, default=0, help="seed of the draw")
    ap.add_argument("--per-class", type=int, default=5)
    ap.add_argument("--adam-steps", type=int, default=200)
    ap.add_argument("--out", default="hard_family.json")
    args = ap.parse_args()
    name, tr, te = data(args)
    xte, yte = te.tensors
    configs = random.Random(args.draw).sample(grid(), len(grid()))  # a seeded shuffle, drawn in order
    print(f"data: {name}; {len(grid())} configurations in the grid, drawn (seed {args.draw}) until {args.nets} trained; "
          f"{args.per_class} samples per class; torch {torch.__version__}, {torch.get_num_threads()} threads",
          flush=True)
    rows, diverged, k = [], [], args.per_class
    for label, build, cfg in configs:
        if len(rows) == args.nets:
            break
        net = train(build(), tr, cfg, progress=False).eval()
        acc = accuracy(net, te)
        if not acc >= 0.2:
            diverged.append((label, acc))
            print(f"\n{label}: diverged (test accuracy {100 * acc:.1f}%), skipped", flush=True)
            continue
        r = reach(net, xte, yte)
        classes = [c for c in range(10) if r[c] > 0]
        print(f"\n{label}: test accuracy {100 * acc:.1f}%; real reach per class "
              + " ".join(f"{v:.2f}" for v in r), flush=True)
        row = {"net": label, "accuracy": acc, "reach": r, "results": {}}
        runs = [(m, cls, rng) for m, cls in methods(label) for rng in (None, BOX)]
        for m, cls, rng in runs:
            per = {}
            for c in classes:
                per[c] = run_class(lambda: cls(net).attribute(target=[c] * k, seed=c, input_range=rng), k)
            row["results"][f"{m}{' box' if rng else ''}"] = per
        per = {}
        for c in classes:
            def adam():
                x = projected_adam_attack(net, torch.full((k,), c), SHAPE, steps=args.adam_steps, seed=c)
                with model_mode_guard(net), torch.no_grad():
                    ok = class_probabilities(net, x)[:, c] >= 0.9
                if not bool(ok.all()):
                    raise InversionError("adam", int(ok.sum()), k, {}, x, ok, None)
                return x
            per[c] = run_class(adam, k)
        row["results"]["projected Adam box"] = per
        for key, per in row["results"].items():
            v = [a for a, _ in per.values()]
            ms = statistics.median([b for _, b in per.values()])
            worst = min(per, key=lambda c: per[c][0])
            print(f"  {key:20s} verified {100 * sum(v) / len(v):5.1f}%  worst class {worst}: "
                  f"{100 * per[worst][0]:3.0f}%  median ms/verified {ms:8.1f}", flush=True)
        rows.append(row)
    print("\nsummary over nets (verified %: mean / worst net / worst class; median ms per verified sample):")
    keys = sorted({k_ for r in rows for k_ in r["results"]})
    print("| route | nets | mean verified % | worst net % | worst class % | nets at 100% | median ms |")
    print("|---|---|---|---|---|---|---|")
    for key in keys:
        nets = [r for r in rows if key in r["results"]]
        per_net = [100 * statistics.mean(a for a, _ in r["results"][key].values()) for r in nets]
        worst_cls = min(100 * a for r in nets for a, _ in r["results"][key].values())
        ms = statistics.median(b for r in nets for _, b in r["results"][key].values())
        print(f"| {key} | {len(nets)} | {statistics.mean(per_net):.1f} | {min(per_net):.1f} | {worst_cls:.0f} | "
              f"{sum(v == 100 for v in per_net)} | {ms:.1f} |")
    if diverged:
        print("\ndiverged (skipped): " + "; ".join(f"{n} ({100 * a:.1f}%)" for n, a in diverged))
    Path(args.out).write_text(json.dumps({"rows": rows, "diverged": diverged}, indent=1, default=str))


if __name__ == "__main__":
    main()
