"""Piecewise-linear nets: the default route against ForwardPassInversion, and certified regions, in one run.

On a ReLU MLP, a ReLU + MaxPool + AvgPool CNN, the same CNN under a SELU head, and a
Conv-ReLU-MaxPool x2 trunk under a Linear-SELU-Linear head (trained on MNIST, or the digits), for
every class, inside the pixel box [0, 1]:
- ms per verified sample of ``attribute`` at the defaults (GeneralizedInversion and
  BackwardPassInversion: Levenberg-Marquardt on the whole net) and of ForwardPassInversion, and
  their ratio;
- ms per verified sample with certified regions (``return_regions=True``: one linear program per
  sample; GeneralizedInversion's default before the routing change), and its ratio to
  ForwardPassInversion;
- diversity (mean pairwise L2 distance within a class) of both;
- per class, the mean Chebyshev radius of the regions (the certified L2 robustness margin at
  their centres);
- the certificate: 200 uniform points of each region's Chebyshev ball, 50 hit-and-run points
  and 50 convex combinations of them: the share inside ``A x <= b``, inside the box and at
  p >= 0.9 on the float32 model (it must be 100%);
- where a region's time goes: the linearization and HiGHS's interior point;
- the memory that 64 regions hold (their rows are stored sparse where most entries are zero).

Usage: python benchmarks/relu_lp.py [--data-root DIR] [--per-class 4] [--nets mlp cnn mixed held]
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from captum_invert import BackwardPassInversion, ForwardPassInversion, GeneralizedInversion
from captum_invert.blocks.piecewise import constraint_count, linearize, split_piecewise
from captum_invert.blocks.plan import trace_leaf_modules
from captum_invert.models import FCNN, TrainConfig, accuracy, train
from captum_invert.solvers.lp import chebyshev_center

from _common import data, parser  # noqa: E402

BOX = (0.0, 1.0)


def relu_cnn(head: str = "linear"):
    layers = [nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
              nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16 * 7 * 7, 64)]
    layers += [nn.ReLU(), nn.Linear(64, 10)] if head == "linear" else [nn.SELU(), nn.Linear(64, 10)]
    net = nn.Sequential(*layers)
    net.input_shape = (1, 28, 28)
    return net


def held_out_cnn():
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 7 * 7, 64), nn.SELU(),
                        nn.Linear(64, 10))
    net.input_shape = (1, 28, 28)
    return net


NETS = {
    "mlp": ("ReLU MLP 784-128-64-10", lambda: FCNN((784, 128, 64, 10), "relu", False, (1, 28, 28))),
    "cnn": ("ReLU/MaxPool/AvgPool CNN", relu_cnn),
    "mixed": ("ReLU CNN trunk + SELU head", lambda: relu_cnn("selu")),
    "held": ("Conv-ReLU-MaxPool x2 + Linear-SELU-Linear", held_out_cnn),
}


def certificate(net, reg, target, g):
    s = reg.sample(50, seed=g).reshape(50, -1)
    lam = torch.rand(50, 1, generator=g, dtype=torch.float64)
    pts = torch.cat([reg.ball_points(200, seed=g).reshape(200, -1), s, lam * s + (1 - lam) * s.roll(1, 0)])
    with torch.no_grad():
        p = torch.softmax(net(pts.reshape(-1, 1, 28, 28).float()), 1)[:, target]
    ok = reg.contains(pts.reshape(-1, 1, 28, 28)) & (pts.min(1).values >= 0) & (pts.max(1).values <= 1) & (p >= 0.9)
    return int(ok.sum()), len(pts)


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="*", default=list(NETS), choices=list(NETS))
    ap.add_argument("--per-class", type=int, default=4)
    args = ap.parse_args()
    name, tr, te = data(args)
    torch.set_num_threads(torch.get_num_threads())
    print(f"data: {name}, {len(tr)} train / {len(te)} test; {args.per_class} samples per class; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    targets = [c for c in range(10) for _ in range(args.per_class)]
    summary = []
    for key in args.nets:
        label, build = NETS[key]
        torch.manual_seed(0)
        net = train(build(), tr, TrainConfig(epochs=3, lr=1e-3, optimizer="adam"), progress=False).eval()
        calls = trace_leaf_modules(net, torch.zeros(2, 1, 28, 28)).calls
        rows = constraint_count(calls) + 2 * 784
        print(f"\n{label}: test accuracy {100 * accuracy(net, te):.1f}%; LP: 784 inputs x up to {rows} rows")
        res = {}
        methods = (("generalized", GeneralizedInversion, {}), ("backward", BackwardPassInversion, {}),
                   ("forward", ForwardPassInversion, {}), ("regions", BackwardPassInversion, {"return_regions": True}))
        ForwardPassInversion(net, input_shape=(1, 28, 28)).attribute(target=targets[:10], seed=1, input_range=BOX)
        for meth, cls, kw in methods:
            inv = cls(net, input_shape=(1, 28, 28))
            t0 = time.perf_counter()
            x = inv.attribute(target=targets, seed=0, input_range=BOX, allow_unverified=True, **kw)
            dt = time.perf_counter() - t0
            if kw:
                x, regions = x
            with torch.no_grad():
                p = torch.softmax(net(x), 1)[torch.arange(len(targets)), torch.tensor(targets)]
            ok = (p >= 0.9) & (x.reshape(len(x), -1).min(1).values >= 0) & (x.reshape(len(x), -1).max(1).values <= 1)
            div = float(torch.stack([torch.pdist(x[[i for i, t in enumerate(targets) if t == c]].reshape(
                args.per_class, -1)).mean() for c in range(10)]).mean()) if args.per_class > 1 else math.nan
            res[meth] = (100 * float(ok.float().mean()), 1000 * dt / max(int(ok.sum()), 1), div)
        g = torch.Generator().manual_seed(0)
        radii, cert_ok, cert_n = [], 0, 0
        for c in range(10):
            rs = [regions[i] for i, t in enumerate(targets) if t == c and regions[i] is not None]
            radii.append(sum(r.chebyshev_ball()[1] for r in rs) / max(len(rs), 1))
            for r in rs[:1]:
                a, n = certificate(net, r, c, g)
                cert_ok, cert_n = cert_ok + a, cert_n + n
        held = [r for r in regions if r is not None]
        mem64 = 64 * sum(r.nbytes for r in held) / len(held) / 2 ** 20
        dense64 = 64 * sum(r.b.numel() * 784 * 8 for r in held) / len(held) / 2 ** 20
        # where one region's time goes
        reg = next(r for r in regions if r is not None)
        t0 = time.perf_counter()
        linearize(split_piecewise(calls)[0], reg.anchor)
        t_lin = time.perf_counter() - t0
        t0 = time.perf_counter()
        chebyshev_center(reg.A, reg.b, reg.E, reg.f, reg.basis)
        t_lp = time.perf_counter() - t0
        print(f"  rows of one region: {len(reg.b)} ({', '.join(f'{g_[0]}: {g_[2] - g_[1]}' for g_ in reg.groups)})"
              f"{'; equalities: ' + str(len(reg.E)) if reg.E is not None else ''}; linearization "
              f"{1000 * t_lin:.0f} ms, HiGHS {1000 * t_lp:.0f} ms")
        print("  route                      | verified % | ms/verified | x forward | diversity")
        for meth, (v, ms, dv) in res.items():
            print(f"  {meth:26s} | {v:10.1f} | {ms:11.2f} | {ms / res['forward'][1]:9.1f} | {dv:9.2f}")
        print("  Chebyshev radius per class: " + " ".join(f"{r:.3f}" for r in radii))
        print(f"  memory held by 64 regions: {mem64:.0f} MB (their rows dense: {dense64:.0f} MB)")
        print(f"  certificate: {cert_ok}/{cert_n} random points of the regions verify "
              f"({100 * cert_ok / max(cert_n, 1):.1f}%)")
        summary.append([label, *(f"{res[m][0]:.0f}" for m in ("generalized", "forward", "regions")),
                        f"{res['generalized'][1]:.2f}", f"{res['forward'][1]:.2f}",
                        f"{res['generalized'][1] / res['forward'][1]:.1f}",
                        f"{res['regions'][1]:.0f}", f"{res['regions'][1] / res['forward'][1]:.0f}",
                        f"{min(radii):.3f}-{max(radii):.3f}", f"{100 * cert_ok / max(cert_n, 1):.1f}",
                        str(len(reg.b)), f"{mem64:.0f}"])
    head = ["net", "default verified %", "forward verified %", "regions verified %", "default ms",
            "forward ms", "default / forward", "region ms", "region / forward", "Chebyshev radius",
            "certified points %", "rows", "MB per 64 regions"]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in summary:
        print("| " + " | ".join(r) + " |")
    d = 3 * 224 * 224
    conv = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU())
    rows = constraint_count(trace_leaf_modules(conv, torch.zeros(2, 3, 224, 224)).calls) + 2 * d
    print(f"\nA 3x224x224 net: one 64-channel conv + ReLU alone gives {rows:.3g} rows x {d} inputs = "
          f"{rows * d * 8 / 1e12:.1f} TB of dense float64 (the limit is 1.6 GB): out of reach of the dense LP.")


if __name__ == "__main__":
    main()
