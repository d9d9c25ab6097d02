"""The averaged Jacobian against the pointwise one, side by side in one run.

The inversion methods' Levenberg-Marquardt steps use ``J_bar <- b J_bar + (1 - b) J(x)``
(``SolverSettings(jacobian_averaging=b)``, default b = 0.5); b = 0 is the pointwise Jacobian.
Nets:

- the saturated nets of ``tests/_core/test_saturated.py`` (SELU, ELU and LeakyReLU MLPs with an
  activation on the logits, a BatchNorm CNN with an ELU head; Adam at 1e-2 for 30 epochs on the
  8x8 digits): 5 samples of each class inside [0, 1], per method, with the first-order
  escalation off (the Levenberg-Marquardt alone) and on (the defaults);
- the zoo's families after 150 Adam steps on the digits padded to 32x32 (as in
  ``zoo_distribution.py``): 2 samples of each class and 6 of the distribution 0.5 / 0.3 / 0.2,
  inside [0, 1], by ForwardPassInversion and GeneralizedInversion at their defaults.

Printed per row and b: verified / requested, seconds, mean iterations (ForwardPassInversion
reports them) and escalated samples. Targets a net provably cannot reach (a ValueError before
any work) are counted apart.

    python benchmarks/jacobian_averaging.py [--part saturated|zoo|all]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from captum_invert import BackwardPassInversion, ForwardPassInversion, GeneralizedInversion, InversionError
from captum_invert import SolverSettings
from captum_invert.datasets import load_dataset, load_digits
from captum_invert.models import FCNN, TrainConfig, train
from captum_invert.models.zoo import pad_to_32, recalibrate_batchnorm, zoo_model

BETAS = (0.0, 0.5)
ZOO = ["bn-mlp", "selu-logits", "resnet18 (torchvision)", "mobilenet_v3_small (torchvision)",
       "convnext_atto (timm)", "vit (timm)", "mlp-mixer (timm)", "swin (timm)"]


def run(cls, net, jobs, escalate, shape=None, lp=True):
    """``jobs``: (target, n_samples, seed). Per b: (verified, requested, refused, s, iterations, escalated)."""
    out = []
    for b in BETAS:
        settings = SolverSettings(escalation=escalate, jacobian_averaging=b, lp=lp)
        ok = req = refused = esc = 0
        its = []
        t0 = time.perf_counter()
        for target, n, seed in jobs:
            inv = cls(net, solver=settings) if shape is None else cls(net, input_shape=shape, solver=settings)
            try:
                inv.attribute(target=target, n_samples=n, seed=seed, input_range=(0.0, 1.0), atol=0.02)
                ok += n
            except InversionError as e:
                ok += e.n_verified
            except ValueError:  # provably out of reach, before any work
                refused += n
                continue
            req += n
            its.append(inv.last_stats.get("mean_iterations", float("nan")))
            esc += inv.last_stats.get("escalated", 0)
        out.append((ok, req, refused, time.perf_counter() - t0, sum(its) / max(len(its), 1), esc))
    return out


def show(tag, res):
    cells = []
    for b, (ok, req, refused, s, it, esc) in zip(BETAS, res):
        cell = f"b={b}: {ok:3d}/{req:<3d} {s:6.1f}s it {it:5.1f} esc {esc:3d}"
        cells.append(cell + (f" ({refused} out of reach)" if refused else ""))
    print(f"{tag:46s} | " + " | ".join(cells), flush=True)


def saturated():
    tr = load_digits("train", image_size=8)
    cfg = TrainConfig(epochs=30, lr=1e-2, optimizer="adam")
    nets = {}
    for act in ("selu", "elu", "leaky_relu"):
        torch.manual_seed(0)
        nets[act] = train(FCNN((64, 64, 64, 32, 16, 10), act, True, input_shape=(1, 8, 8)), tr, cfg, progress=False)
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(128, 32), nn.ELU(), nn.Linear(32, 10), nn.ELU())
    cnn.input_shape = (1, 8, 8)
    nets["bn_cnn"] = train(cnn, tr, cfg, progress=False)
    jobs = [([c] * 5, 5, 0) for c in range(10)]
    for escalate in (False, True):
        for name, net in nets.items():
            for cls in (ForwardPassInversion, GeneralizedInversion, BackwardPassInversion):
                if name == "bn_cnn" and cls is BackwardPassInversion:
                    continue
                tag = f"saturated {name}, {cls.__name__[:-9]}, escalation {'on' if escalate else 'off'}"
                show(tag, run(cls, net, jobs, escalate, lp=False))


def zoo():
    x, y = load_dataset("digits", "train").tensors
    x = pad_to_32(x)
    dist = torch.zeros(10)
    dist[3], dist[7], dist[1] = 0.5, 0.3, 0.2
    for name in ZOO:
        torch.manual_seed(0)
        if name == "selu-logits":
            net = nn.Sequential(nn.Flatten(), nn.Linear(1024, 256), nn.SELU(), nn.Linear(256, 256), nn.SELU(),
                                nn.Linear(256, 10), nn.SELU())
        else:
            net = zoo_model(name)
        opt = torch.optim.Adam(net.parameters(), 2e-3)
        g = torch.Generator().manual_seed(0)
        net.train()
        for _ in range(150):
            i = torch.randint(len(x), (64,), generator=g)
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[i]), y[i]).backward()
            opt.step()
        net = recalibrate_batchnorm(net, x[:512]).eval()
        for cls in (ForwardPassInversion, GeneralizedInversion):
            show(f"{name}, {cls.__name__[:-9]}, classes", run(cls, net, [(c, 2, c) for c in range(10)], True, (1, 32, 32)))
            show(f"{name}, {cls.__name__[:-9]}, 0.5/0.3/0.2", run(cls, net, [(dist, 6, 0)], True, (1, 32, 32)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="all", choices=["saturated", "zoo", "all"])
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; b: the weight of the past Jacobians")
    if args.part in ("saturated", "all"):
        saturated()
    if args.part in ("zoo", "all"):
        zoo()


if __name__ == "__main__":
    main()
