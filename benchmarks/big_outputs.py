"""Distribution targets on a 1000-class model: cost against a class target, in one run.

A torchvision resnet18 (1000 classes, 3x224x224; random weights, as none can be downloaded
here) is inverted by ForwardPassInversion towards class 1, and towards a distribution with mass
0.5 / 0.3 / 0.2 on classes 1, 2, 3 (atol 0.02), after one warm-up call; each with the default
averaged Jacobian and with the pointwise one (``SolverSettings(jacobian_averaging=0)``, the
previous default). Printed per seed and route: seconds, ratio to that route's class target,
verified share, max-abs delta, iterations and the process's peak resident memory; then the
ratios of the summed times. The old path (one residual per class, one backward pass
each per step) is timed for one step from 20 products and extrapolated to 1000.

    python benchmarks/big_outputs.py [--n-samples 2] [--seeds 0 1 2 3]
"""
from __future__ import annotations

import argparse
import resource
import time

import torch
import torchvision
from torch.func import vjp

from captum_invert import ForwardPassInversion, SolverSettings


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-samples", type=int, default=2)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = ap.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=1000).eval()
    inv = ForwardPassInversion(model, input_shape=(3, 224, 224))
    dist = torch.zeros(1000)
    dist[1], dist[2], dist[3] = 0.5, 0.3, 0.2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; n_samples={args.n_samples}")
    print(f"{'seed':>4} {'Jacobian':>9} {'target':>12} {'s':>7} {'x class':>8} {'verified':>9} "
          f"{'max delta':>10} {'iters':>6} {'peak GB':>8}")
    inv.attribute(target=1, n_samples=1, seed=99, max_iter=2, allow_unverified=True)  # warm-up
    runs = [("class 1", 1), ("0.5/0.3/0.2", dist)]
    routes = [("averaged", SolverSettings().jacobian_averaging), ("pointwise", 0.0)]
    totals = {(r, name): 0.0 for r, _ in routes for name, _ in runs}
    for seed in args.seeds:
        for route, beta in routes:
            inv = ForwardPassInversion(model, input_shape=(3, 224, 224),
                                       solver=SolverSettings(jacobian_averaging=beta))
            t_class = None
            for name, target in runs:
                t0 = time.perf_counter()
                x, d = inv.attribute(target=target, n_samples=args.n_samples, seed=seed, atol=0.02,
                                     return_convergence_delta=True, allow_unverified=True)
                s = time.perf_counter() - t0
                t_class = t_class or s
                totals[route, name] += s
                ok = (d <= (0.1 if name.startswith("class") else 0.02)).float().mean()
                print(f"{seed:>4} {route:>9} {name:>12} {s:7.2f} {s / t_class:8.2f} {100 * float(ok):8.0f}% "
                      f"{float(d.max()):10.4f} {inv.last_stats.get('mean_iterations', 0):6.1f} {peak_gb():8.2f}")
    for route, _ in routes:
        for name, _ in runs[1:]:
            print(f"summed over seeds, {route} Jacobian: {name} takes "
                  f"{totals[route, name] / totals[route, 'class 1']:.2f}x the class target")
    print(f"the averaged route's distribution takes {totals['averaged', runs[1][0]] / totals['pointwise', runs[1][0]]:.2f}x "
          f"the pointwise route's; its class target {totals['averaged', 'class 1'] / totals['pointwise', 'class 1']:.2f}x")
    # the old path: C residuals, one backward pass each per step
    x = torch.randn(args.n_samples, 3, 224, 224)
    t0 = time.perf_counter()
    out, back = vjp(lambda z: torch.log_softmax(model(z), 1), x)
    for j in range(20):
        cot = torch.zeros_like(out)
        cot[:, j] = 1
        back(cot)
    per = (time.perf_counter() - t0) / 20
    print(f"old path (one residual per class): one step costs ~{per * 1000:.0f} s "
          f"(1000 products at {per:.3f} s, extrapolated from 20)")


if __name__ == "__main__":
    main()
