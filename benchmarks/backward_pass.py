"""Verified samples per second of BackwardPassInversion, side by side with what a user would
otherwise write, in one run:

  (a) the paper's algorithm per sample in NumPy, as a direct transcription: pinv recomputed per
      call, random null-space noise, values clipped into each activation's domain;
  (b) gradient ascent on the input with Adam (batched, lr 0.05) until p_target >= 0.9.

Adam runs before the NumPy loop: right after it, BLAS threads slowed torch by up to 15x here.

Usage: python benchmarks/backward_pass.py [--data-root DIR] [--n 2000]
(MNIST 8k/2k split when --data-root or CAPTUM_INVERT_MNIST is set, else the bundled digits.)
"""
from __future__ import annotations

import time

import numpy as np
import torch

from captum_invert import BackwardPassInversion, InversionError
from captum_invert.metrics import target_probability
from captum_invert.models import seed_fcnn, train

from _common import data, frozen, parser  # noqa: E402 (benchmarks/ is on sys.path when run as a script)

LAM, ALPHA = 1.0507009873554805, 1.6732632423543772


def numpy_paper(model, label, std, cond_num, rng):
    """One sample, the paper's back-pass written naively (per sample, pinv every call)."""
    lin = [m for m in model if isinstance(m, torch.nn.Linear)]
    p = np.full(10, 0.05 / 9)
    p[label] = 0.95
    z = np.log(p)
    z = z - z.min() + (-LAM * ALPHA) * 0.95  # softmax constant: smallest logit inside SELU's range
    y = z
    for layer in reversed(lin):
        W = layer.weight.detach().double().numpy()
        b = layer.bias.detach().double().numpy()
        y = np.maximum(y, -LAM * ALPHA * 0.999)  # clip into SELU's range
        a = np.where(y >= 0, y / LAM, np.log1p(y / (LAM * ALPHA)))
        U, S, Vt = np.linalg.svd(W)
        keep = S >= S[0] / cond_num
        pinv = np.linalg.pinv(W, rcond=1.0 / cond_num)
        x = pinv @ (a - b)
        null = Vt[keep.sum():]
        if len(null):
            x = x + null.T @ rng.normal(0, std * np.linalg.norm(x) / np.sqrt(len(null)), len(null))
        y = x
    return torch.tensor(y, dtype=torch.float32).reshape(1, 1, 28, 28)


@frozen
def adam_ascent(model, labels, min_prob=0.9, lr=0.05, max_steps=1000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn((len(labels), 1, 28, 28), generator=g) * 0.1).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    lab = torch.as_tensor(labels)
    for _ in range(max_steps):
        lp = torch.log_softmax(model(x), 1).gather(1, lab[:, None]).squeeze(1)
        if bool((lp >= np.log(min_prob)).all()):
            break
        opt.zero_grad()
        # only unfinished samples push
        (-(lp * (lp < np.log(min_prob))).sum()).backward()
        opt.step()
    return x.detach()


def main():
    ap = parser(__doc__)
    ap.add_argument("--n", type=int, default=2000, help="samples for the batched methods")
    ap.add_argument("--n-numpy", type=int, default=100, help="samples for the per-sample NumPy loop")
    args = ap.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    name, tr, _ = data(args)
    print(f"data: {name} ({len(tr)} training images); torch threads: {torch.get_num_threads()}")
    rows = []
    for depth in (2, 6):
        model = train(seed_fcnn(depth), tr, progress=False)
        labels = [i % 10 for i in range(args.n)]
        inv = BackwardPassInversion(model)
        inv.attribute(target=labels[:20], seed=1)  # warm-up: SVD cache, allocator
        t = time.perf_counter()
        try:
            inv.attribute(target=labels, seed=0)
            ok = args.n
        except InversionError as e:
            ok = e.n_verified
        t_ours = time.perf_counter() - t
        try:
            inv.attribute(target=labels, seed=0, input_range=(0.0, 1.0))
            ok_box = args.n
        except InversionError as e:
            ok_box = e.n_verified
        t = time.perf_counter()
        xa = adam_ascent(model, labels)
        t_adam = time.perf_counter() - t
        ok_adam = int((target_probability(model, xa, labels) >= 0.9).sum())
        rng = np.random.default_rng(0)
        t = time.perf_counter()
        xs = torch.cat([numpy_paper(model, labels[i], 0.1, 100.0, rng) for i in range(args.n_numpy)])
        t_np = time.perf_counter() - t
        ok_np = int((target_probability(model, xs, labels[: args.n_numpy]) >= 0.9).sum())
        r_ours = ok / t_ours
        r_np = ok_np / t_np
        r_adam = ok_adam / t_adam
        rows.append((depth, r_ours, ok / args.n, r_np, ok_np / args.n_numpy, r_adam, ok_adam / args.n,
                     ok_box / args.n))
    print()
    print("| net | ours verified/s (verified %) | ours, input_range (0,1): verified % "
          "| (a) NumPy per-sample verified/s (verified %) | (b) Adam verified/s (verified %) "
          "| ours / (a) | ours / (b) |")
    print("|---|---|---|---|---|---|---|")
    for d, ro, vo, rn, vn, ra, va, vb in rows:
        ra_s = f"{ro / rn:.0f}x" if rn > 0 else "inf (a verified none)"
        print(f"| {d}-layer SELU | {ro:,.0f} ({100 * vo:.1f}%) | {100 * vb:.1f}% | {rn:,.1f} ({100 * vn:.1f}%) | "
              f"{ra:,.0f} ({100 * va:.1f}%) | {ra_s} | {ro / ra:.1f}x |")


if __name__ == "__main__":
    main()
