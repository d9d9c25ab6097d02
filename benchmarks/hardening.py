"""Hardening with the model's own inversions against ACET, on the same nets, in one run.

For a SELU MLP, a ReLU CNN and the small ViT (trained on MNIST, or the digits), before and
after ``harden`` at its defaults and after our ACET (same fine-tuning budget):
- clean test accuracy;
- the strong attack that neither method trained against: projected Adam, ``--adam-steps``
  steps, from uniform noise, towards every class: the share of starts that reach p >= 0.9
  ("found"), and that reach it and are undesirable (an independent judge CNN does not see the
  class): "undesirable";
- the judge's acceptance of what Adam still finds;
- our own LM attack (ForwardPassInversion from random starts): found and undesirable.
Reporting both attacks guards against gradient masking: a model that only stops our own LM
has not been hardened.

Usage: python benchmarks/hardening.py [--data-root DIR] [--nets selu cnn vit] [--per-class 20]
"""
from __future__ import annotations

import time

import torch
from torch import nn

from captum_invert import harden
from captum_invert.hardening import acet, attack_rates
from captum_invert.models import TrainConfig, accuracy, seed_fcnn, train, train_judge, vit_mnist_small

from _common import data, parser  # noqa: E402 (benchmarks/ is on sys.path when run as a script)


def relu_cnn():
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))
    net.input_shape = (1, 28, 28)
    return net


NETS = {
    "selu": ("SELU MLP (seed paper's 6 layers, Adam)", lambda: seed_fcnn(6), TrainConfig(epochs=10, lr=1e-3, optimizer="adam")),
    "cnn": ("ReLU CNN", relu_cnn, TrainConfig(epochs=3, lr=1e-3, optimizer="adam")),
    "vit": ("ViT (3 blocks)", lambda: vit_mnist_small(depth=3), TrainConfig(epochs=10, lr=1e-3, optimizer="adamw")),
}


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="*", default=list(NETS), choices=list(NETS))
    ap.add_argument("--per-class", type=int, default=20, help="attack starts per class")
    ap.add_argument("--adam-steps", type=int, default=400)
    args = ap.parse_args()
    name, tr, te = data(args)
    judge = train_judge(tr, epochs=12)
    print(f"data: {name}, {len(tr)} train / {len(te)} test; judge accuracy {100 * accuracy(judge, te):.1f}%; "
          f"{args.per_class} attack starts per class; Adam {args.adam_steps} steps")
    head = ["net", "model", "clean acc %", "Adam found %", "Adam undesirable %", "judge accepts Adam's %",
            "LM found %", "LM undesirable %", "seconds"]
    rows = []
    for key in args.nets:
        label, build, cfg = NETS[key]
        model = train(build(), tr, cfg, progress=False)
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        t0 = time.perf_counter()
        hardened, report = harden(model, tr, judge=judge, eval_data=te)
        t_h = time.perf_counter() - t0
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "harden changed the model"
        t0 = time.perf_counter()
        peer = acet(model, tr)
        t_a = time.perf_counter() - t0
        for tag, net, t in (("before", model, 0.0), ("harden", hardened, t_h), ("ACET", peer, t_a)):
            r = attack_rates(net, 10, args.per_class, tuple(tr.tensors[0].shape[1:]), judge,
                             adam_steps=args.adam_steps)
            rows.append([label, tag, f"{100 * accuracy(net, te):.1f}", f"{100 * r['adam_found']:.0f}",
                         f"{100 * r['adam_undesirable']:.0f}", f"{100 * r['adam_judged']:.0f}",
                         f"{100 * r['lm_found']:.0f}", f"{100 * r['lm_undesirable']:.0f}", f"{t:.0f}"])
            print("  " + " | ".join(rows[-1]), flush=True)
        print(f"  harden's rounds on {label}:\n" + "\n".join("    " + ln for ln in report.table().splitlines()))
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
