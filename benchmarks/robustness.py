"""The frontier table: verification rates on nets the tests do not train, hard (saturated,
overconfident) and ordinary, before and after the first-order escalation, in one run.

For each net:
- test accuracy, and whether real data reach every class: the share of held-out images of each
  class that the net gives p >= 0.9 (the smallest over classes is printed; > 0 means reachable);
- for BackwardPassInversion, ForwardPassInversion and GeneralizedInversion at their defaults,
  unboxed and with input_range=(0, 1): the verified share of ``--per-class`` samples of every
  class, and the median over classes of the milliseconds per verified sample;
- "before", with ``--before escalation`` (the default): Levenberg-Marquardt only (the
  escalation switched off, ``SolverSettings(escalation=False)``: the path of the releases before
  it); with ``--before restarts``: the restarts of the release before the ranked ones
  (``SolverSettings(ranked_restarts=False)``, ``max_retries=3``); with ``--before own-gradient``:
  the escalation with surrogate gradients alone (``SolverSettings(own_gradient=False)``);
  "after": the defaults.
Then the failures' reasons and diagnoses.

Usage: python benchmarks/robustness.py [--data-root DIR] [--per-class 20] [--nets all|hard|ordinary|NAMES]
    [--before escalation|restarts|own-gradient]
"""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from captum_invert import BackwardPassInversion, ForwardPassInversion, GeneralizedInversion, InversionError
from captum_invert import SolverSettings
from captum_invert._core.diagnosis import format_diagnosis
from captum_invert.blocks.plan import model_mode_guard
from captum_invert.metrics import class_probabilities
from captum_invert.models import FCNN, TrainConfig, accuracy, seed_fcnn, train, vit_mnist_small
from captum_invert.models.cnn import bn_cnn

from _common import data, parser  # noqa: E402 (benchmarks/ is on sys.path when run as a script)

SHAPE = (1, 28, 28)


def _mlp(widths, act, final=True):
    return lambda: FCNN(widths, act, final, input_shape=SHAPE)


def _cnn_elu_head():
    body = list(bn_cnn())[:-1]  # conv-BN-ReLU-pool x 2, Flatten
    net = nn.Sequential(*body, nn.Linear(32 * 7 * 7, 128), nn.ELU(), nn.Linear(128, 10), nn.ELU())
    net.input_shape = SHAPE
    return net


ADAM_HI = TrainConfig(epochs=5, lr=1e-2, optimizer="adam")
#: (name, family, builder, training recipe)
NETS = [
    ("7-layer SELU MLP (+ on logits), Adam 1e-2", "hard", _mlp((784, 400, 200, 100, 50, 25, 10), "selu"), ADAM_HI),
    ("5-layer ELU MLP (+ on logits), Adam 1e-2", "hard", _mlp((784, 400, 200, 100, 50, 10), "elu"), ADAM_HI),
    ("5-layer LeakyReLU(0.01) MLP (+ on logits), Adam 1e-2", "hard",
     _mlp((784, 400, 200, 100, 50, 10), "leaky_relu"), ADAM_HI),
    ("6-layer SELU MLP, Adam 1e-3 x 40 epochs (overconfident)", "hard", lambda: seed_fcnn(6, input_shape=SHAPE),
     TrainConfig(epochs=40, lr=1e-3, optimizer="adam")),
    ("BatchNorm CNN + ELU head (+ on logits), Adam 1e-2 x 20 epochs", "hard", _cnn_elu_head,
     TrainConfig(epochs=20, lr=1e-2, optimizer="adam")),
    ("seed paper's 6-layer SELU MLP (SGD)", "ordinary", lambda: seed_fcnn(6, input_shape=SHAPE), TrainConfig()),
    ("ViT (3 blocks), AdamW", "ordinary", lambda: vit_mnist_small(depth=3),
     TrainConfig(epochs=15, lr=1e-3, optimizer="adamw")),
    ("784-300-100-10 tanh, SGD 1e-2", "ordinary", _mlp((784, 300, 100, 10), "tanh", False),
     TrainConfig(epochs=5, lr=1e-2)),
    ("784-300-100-10 ELU (+ on logits), Adam 1e-3", "ordinary", _mlp((784, 300, 100, 10), "elu"),
     TrainConfig(epochs=5, lr=1e-3, optimizer="adam")),
    ("784-200-10 sigmoid, SGD 1e-1", "ordinary", _mlp((784, 200, 10), "sigmoid", False),
     TrainConfig(epochs=5, lr=1e-1)),
]


def _methods(net):
    """BackwardPassInversion needs a chain of Linear layers and invertible activations."""
    return [c for c in (BackwardPassInversion, ForwardPassInversion, GeneralizedInversion)
            if isinstance(net, FCNN) or c is not BackwardPassInversion]


def _run(cls, net, per_class, rng, escalate, diag, plain_restarts=False, own_gradient=True):
    """Per-class calls: (verified share, median ms per verified sample, mean iterations)."""
    settings = SolverSettings(escalation=escalate, ranked_restarts=not plain_restarts, own_gradient=own_gradient)
    n_ok, costs, iters = 0, [], []
    for c in range(10):
        inv = cls(net, solver=settings)
        t = time.perf_counter()
        try:
            n = len(inv.attribute(target=[c] * per_class, seed=c, input_range=rng,
                                  **({"max_retries": 3} if plain_restarts else {})))
        except InversionError as e:
            n = e.n_verified
            if escalate and not plain_restarts and own_gradient:
                diag.append(f"{cls.__name__}{' in (0,1)' if rng else ''}, class {c}: {e.reasons}; "
                            + "; ".join(format_diagnosis(e.diagnosis or [], 0.9)))
        dt = time.perf_counter() - t
        n_ok += n
        costs.append(1000 * dt / n if n else float("inf"))
        if "mean_iterations" in inv.last_stats:
            iters.append(inv.last_stats["mean_iterations"])
    return n_ok / (10 * per_class), statistics.median(costs), (sum(iters) / len(iters) if iters else None)


def main():
    ap = parser(__doc__)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--nets", default="all", help="all, hard, ordinary, or comma-separated indices into NETS")
    ap.add_argument("--before", choices=["escalation", "restarts", "own-gradient"], default="escalation",
                    help="what 'before' lacks: the escalation, the ranked restarts, or the own-gradient fallback")
    args = ap.parse_args()
    name, tr, te = data(args)
    if args.nets in ("all", "hard", "ordinary"):
        chosen = [n for n in NETS if args.nets == "all" or n[1] == args.nets]
    else:
        chosen = [NETS[int(i)] for i in args.nets.split(",")]
    print(f"data: {name}; {args.per_class} samples per class; ms: median over classes of ms per verified sample\n")
    print("| net | family | accuracy | real data: min share p>=0.9 over classes | method | range | "
          "verified before | verified after | ms before | ms after | iterations before / after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    diags = []
    xt, yt = te.tensors
    for tag, fam, build, cfg in chosen:
        torch.manual_seed(0)
        net = train(build(), tr, cfg, progress=False)
        with model_mode_guard(net), torch.no_grad():
            P = class_probabilities(net, xt)
        reach = min(float((P[yt == c, c] >= 0.9).double().mean()) for c in range(10))
        acc = accuracy(net, te)
        for cls in _methods(net):
            for rng in (None, (0.0, 1.0)):
                diag = []
                b = (_run(cls, net, args.per_class, rng, True, diag, plain_restarts=True) if args.before == "restarts"
                     else _run(cls, net, args.per_class, rng, True, diag, own_gradient=False)
                     if args.before == "own-gradient" else _run(cls, net, args.per_class, rng, False, diag))
                a = _run(cls, net, args.per_class, rng, True, diag)
                it = (f"{b[2]:.1f} / {a[2]:.1f}" if b[2] is not None and a[2] is not None else "-")
                print(f"| {tag} | {fam} | {acc:.3f} | {reach:.2f} | {cls.__name__} | {'[0, 1]' if rng else 'free'} | "
                      f"{100 * b[0]:.1f}% | {100 * a[0]:.1f}% | {b[1]:.1f} | {a[1]:.1f} | {it} |", flush=True)
                diags += [f"{tag}: {d}" for d in diag]
    print("\nfailures after the change (reasons; diagnosis):" if diags else "\nno failures after the change")
    for d in diags:
        print("-", d)


if __name__ == "__main__":
    main()
