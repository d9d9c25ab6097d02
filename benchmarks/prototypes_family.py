"""The data-free default on grey nets without BatchNorm that ``prototypes.py`` does not train:
other seeds, recipes and architectures. Every net is reported, failures too.

For each net: the constant image it is least sure about
(:func:`~captum_invert.priors.background_value`), then ``prior='auto'`` (with its
:class:`~captum_invert.priors.Background`), the same prior without it, and lucent's render_vis,
in one run; ``--per-class`` images of each class inside [0, 1], judged by the two grey judges of
``prototypes.py`` (verified / read by the first / read by both / diversity / ms per image).

Nets (``--nets``): ``gelu_mlp`` (2 hidden GELU layers, Adam, seed 3), ``relu_cnn`` (two conv
layers with max-pooling, no BatchNorm, Adam, seed 2), ``selu6`` (the seed paper's 6-layer SELU
MLP, seed 1), ``vit2`` (a 2-block ViT, 4 epochs, seed 1).

Usage: python benchmarks/prototypes_family.py [--data-root DIR] [--per-class 4] [--nets ...]
       (needs: pip install -e '.[bench]' for lucent)
"""
from __future__ import annotations

import time

import torch
from torch import nn

from captum_invert import ForwardPassInversion, InversionError
from captum_invert.blocks.plan import model_mode_guard
from captum_invert.metrics import class_diversity, class_probabilities, judge_accuracy, judge_agreement
from captum_invert.models import TrainConfig, accuracy, seed_fcnn, train, vit_mnist_small
from captum_invert.models.cnn import NO_DIGIT, train_judge
from captum_invert.priors import auto_prior, background_value

from _common import data, parser  # noqa: E402 (benchmarks/ is on sys.path when run as a script)
from prototypes import lucent_render, without_background  # noqa: E402

SHAPE, BOX = (1, 28, 28), (0.0, 1.0)


def relu_cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 49, 64), nn.ReLU(), nn.Linear(64, 10))


def gelu_mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.GELU(), nn.Linear(256, 256), nn.GELU(),
                         nn.Linear(256, 10))


FAMILY = {
    "gelu_mlp": lambda tr: train(gelu_mlp(), tr, TrainConfig(epochs=4, lr=1e-3, optimizer="adam", seed=3),
                                 progress=False),
    "relu_cnn": lambda tr: train(relu_cnn(), tr, TrainConfig(epochs=3, lr=1e-3, optimizer="adam", seed=2),
                                 progress=False),
    "selu6": lambda tr: train(seed_fcnn(6), tr, TrainConfig(seed=1), progress=False),
    "vit2": lambda tr: train(vit_mnist_small(depth=2), tr, TrainConfig(epochs=4, lr=1e-3, optimizer="adamw", seed=1),
                             progress=False),
}


def main():
    ap = parser(__doc__)
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--nets", default=",".join(FAMILY))
    ap.add_argument("--lucent-steps", type=int, default=512)
    args = ap.parse_args()
    _, tr, te = data(args)
    judges = [train_judge(tr), train_judge(tr, variant=1)]
    per = args.per_class
    labels = torch.arange(10).repeat_interleave(per)
    for key in args.nets.split(","):
        model = FAMILY[key](tr)
        with model_mode_guard(model):
            bg = background_value(model, lambda o: o.log_softmax(1), SHAPE, BOX)
        print(f"{key}: test accuracy {100 * accuracy(model, te):.1f}%; least sure constant image {bg}", flush=True)
        auto = auto_prior(model, SHAPE, input_range=BOX)
        rows = [("prior='auto'", lambda: ForwardPassInversion(model, SHAPE).attribute(
                    target=labels.tolist(), input_range=BOX, seed=0, prior="auto", allow_unverified=True)),
                ("auto without Background", lambda: ForwardPassInversion(model, SHAPE).attribute(
                    target=labels.tolist(), input_range=BOX, seed=0, prior=without_background(auto),
                    allow_unverified=True)),
                (f"lucent render_vis ({args.lucent_steps} steps)",
                 lambda: lucent_render(model, labels, per, args.lucent_steps, SHAPE, seed=0))]
        for name, fn in rows:
            t0 = time.perf_counter()
            try:
                x = fn()
            except InversionError as e:
                x = e.result
            dt = time.perf_counter() - t0
            x = x.detach().float().reshape(len(labels), *SHAPE)
            with model_mode_guard(model), torch.no_grad():
                p = class_probabilities(model, x).gather(1, labels[:, None]).squeeze(1)
            ok = (p >= 0.9) & (x.flatten(1).amin(1) >= BOX[0]) & (x.flatten(1).amax(1) <= BOX[1])
            n, read, agree = len(x), 0.0, 0.0
            if bool(ok.any()):
                read = judge_accuracy(judges[0], x[ok], labels[ok], NO_DIGIT)["read"] * int(ok.sum()) / n
                agree = judge_agreement(judges, x[ok], labels[ok])["agree"] * int(ok.sum()) / n
            print(f"  {name:28s} verified {ok.double().mean():.2f}  read {read:.2f}  both {agree:.2f}  "
                  f"div {class_diversity(x, labels):.2f}  ms/image {1000 * dt / n:.0f}", flush=True)


if __name__ == "__main__":
    main()
