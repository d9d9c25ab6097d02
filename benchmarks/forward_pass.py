"""ForwardPassInversion against what a user would otherwise run, in one run, on the seed
paper's 6-layer SELU net and a small ViT (depth 4, dim 96, 4x4 patches):

  (a) ForwardPassInversion, batched (max_iter=30, random starts, retries);
  (b) scipy.optimize.least_squares per sample with the autograd Jacobian. MINPACK's
      method='lm' refuses fewer residuals than unknowns (1 or 10 residuals, 784 unknowns), so
      this uses scipy's default 'trf' on the same residual;
  (c) Adam gradient ascent on the input (batched, lr 0.05), stopped at the same criterion.

Also: the time of one LM iteration against one batched Jacobian evaluation (the floor of any
Jacobian-based method).

Usage: python benchmarks/forward_pass.py [--data-root DIR] [--n 500] [--n-scipy 20]
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from captum_invert import ForwardPassInversion, InversionError
from captum_invert.metrics import target_probability
from captum_invert.models import TrainConfig, accuracy, seed_fcnn, train, vit_mnist_small
from captum_invert.solvers.lm import batched_jacobian

from _common import data, frozen, parser  # noqa: E402 (benchmarks/ is on sys.path when run as a script)


def ours(model, labels, input_range=None):
    inv = ForwardPassInversion(model)
    t = time.perf_counter()
    try:
        x = inv.attribute(target=labels, seed=0, max_iter=30, input_range=input_range)
    except InversionError as e:
        x = e.partial
    dt = time.perf_counter() - t
    return len(x), dt, inv.last_stats["converged_first_start"], inv.last_stats["mean_iterations"]


def _log_odds(model, x, lab):
    lp = torch.log_softmax(model(x), 1)[0]
    return lp[lab] - torch.logsumexp(torch.cat([lp[:lab], lp[lab + 1:]]), 0)


def scipy_per_sample(model, labels, aim=0.95):
    """Per sample, the residual ForwardPassInversion uses: max(0, logit(aim) - log-odds of the
    target class)."""
    from scipy.optimize import least_squares

    ok = 0
    t = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    goal = math.log(aim / (1 - aim))
    for lab in labels:
        x0 = torch.randn(784, generator=g).double().numpy()

        def f(z, lab=lab):
            with torch.no_grad():
                odds = _log_odds(model, torch.tensor(z, dtype=torch.float32).view(1, 1, 28, 28), lab)
            return np.array([max(0.0, goal - float(odds))])

        def jac(z, lab=lab):
            x = torch.tensor(z, dtype=torch.float32).view(1, 1, 28, 28).requires_grad_(True)
            (gr,) = torch.autograd.grad(-_log_odds(model, x, lab), x)
            return gr.double().view(1, -1).numpy()

        res = least_squares(f, x0, jac=jac, max_nfev=30 * 5)
        x = torch.tensor(res.x, dtype=torch.float32).view(1, 1, 28, 28)
        ok += int(target_probability(model, x, [lab])[0] >= 0.9)
    return ok, time.perf_counter() - t


@frozen
def adam(model, labels, lr=0.05, max_steps=1000):
    g = torch.Generator().manual_seed(0)
    x = torch.randn((len(labels), 1, 28, 28), generator=g).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    lab = torch.as_tensor(labels)
    t = time.perf_counter()
    for _ in range(max_steps):
        lp = torch.log_softmax(model(x), 1).gather(1, lab[:, None]).squeeze(1)
        todo = lp < math.log(0.9)
        if not bool(todo.any()):
            break
        opt.zero_grad()
        (-(lp * todo).sum()).backward()
        opt.step()
    dt = time.perf_counter() - t
    return int((target_probability(model, x.detach(), labels) >= 0.9).sum()), dt


@frozen
def iteration_vs_jacobian(model, n=256, reps=5):
    """Seconds of one LM iteration (from ForwardPassInversion's solver, timed over max_iter=1
    calls minus one Jacobian for the start) against one batched Jacobian evaluation."""
    x = torch.randn(n, 784)
    lab = torch.arange(n) % 10
    f = lambda z: (math.log(0.95) - torch.log_softmax(model(z.view(-1, 1, 28, 28)), 1).gather(1, lab[:, None])).clamp_min(0)  # noqa: E731
    from captum_invert.solvers import levenberg_marquardt

    batched_jacobian(f, x)
    t = time.perf_counter()
    for _ in range(reps):
        batched_jacobian(f, x)
    t_jac = (time.perf_counter() - t) / reps
    never = lambda *a: torch.zeros(len(a[2]), dtype=torch.bool)  # noqa: E731
    t = time.perf_counter()
    for _ in range(reps):
        levenberg_marquardt(lambda z, idx: f(z), x, max_iter=1, done_fn=never)
    t_one = (time.perf_counter() - t) / reps
    t = time.perf_counter()
    for _ in range(reps):
        levenberg_marquardt(lambda z, idx: f(z), x, max_iter=0, done_fn=never)
    t_zero = (time.perf_counter() - t) / reps
    return t_one - t_zero, t_jac


@frozen
def batching_gain(model, n=500, reps=3):
    """ms per sample of one forward + backward pass (the input gradient) alone and in a batch
    of ``n``: what batching can buy any Jacobian-based method on this machine."""
    out = []
    for b in (1, n):
        x = torch.randn(b, 1, 28, 28, requires_grad=True)
        best = float("inf")
        for _ in range(reps + 1):
            t = time.perf_counter()
            torch.autograd.grad(torch.log_softmax(model(x), 1)[:, 0].sum(), x)
            best = min(best, time.perf_counter() - t)
        out.append(best / b * 1e3)
    return out


def main():
    ap = parser(__doc__)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--n-scipy", type=int, default=20)
    ap.add_argument("--vit-epochs", type=int, default=20)
    args = ap.parse_args()
    name, tr, te = data(args)
    fcnn = train(seed_fcnn(6), tr, progress=False)
    vit = train(vit_mnist_small(), tr, TrainConfig(epochs=args.vit_epochs, lr=1e-3, optimizer="adamw",
                                                   batch_size=64), progress=True)
    print(f"data: {name}; 6-layer SELU accuracy {accuracy(fcnn, te):.3f}; "
          f"ViT (depth 4, dim 96) accuracy {accuracy(vit, te):.3f}; torch threads {torch.get_num_threads()}")
    labels = [i % 10 for i in range(args.n)]
    print("\n| model | (a) ours: verified % (first start), s/verified, mean LM iterations | box (0,1): verified % (first start) "
          "| (b) scipy per sample: verified %, s/verified | (c) Adam: verified %, s/verified "
          "| (b)/(a) | (c)/(a) | LM iteration / Jacobian | forward+backward ms/sample: alone, batch 500 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mname, model in (("6-layer SELU", fcnn), ("ViT d4 w96", vit)):
        ForwardPassInversion(model).attribute(target=[0, 1], seed=1)  # warm-up
        n_ok, t_a, first, its = ours(model, labels)
        n_box, _, first_box, _ = ours(model, labels, (0.0, 1.0))
        ok_c, t_c = adam(model, labels)  # before scipy: after its loop, BLAS threads slowed torch
        ok_b, t_b = scipy_per_sample(model, labels[: args.n_scipy])
        s_a = t_a / max(n_ok, 1)
        s_b = t_b / ok_b if ok_b else float("inf")
        s_c = t_c / ok_c if ok_c else float("inf")
        t_it, t_jac = iteration_vs_jacobian(model)
        t1, tn = batching_gain(model)
        print(f"| {mname} | {100 * n_ok / args.n:.1f}% ({100 * first / args.n:.1f}%), {s_a * 1e3:.3f} ms, {its:.1f} "
              f"| {100 * n_box / args.n:.1f}% ({100 * first_box / args.n:.1f}%) "
              f"| {100 * ok_b / args.n_scipy:.0f}%, {s_b * 1e3:.1f} ms | {100 * ok_c / args.n:.1f}%, {s_c * 1e3:.3f} ms "
              f"| {s_b / s_a:.0f}x | {s_c / s_a:.1f}x | {t_it / t_jac:.2f} | {t1:.3f}, {tn:.3f} ({t1 / tn:.1f}x) |")


if __name__ == "__main__":
    main()
