"""The model zoo: timm and torchvision architectures trained briefly on MNIST (padded to 32x32),
inverted by ForwardPassInversion and GeneralizedInversion at their defaults, in one run.

Training: AdamW 1e-3, batch 128, ``--epochs`` epochs (``--attn-epochs`` for the attention and
mixer nets), then every BatchNorm's running statistics
re-estimated on the training images. For each architecture: test accuracy; whether real test images reach p >= 0.9 in every class; the GeneralizedInversion plan's time and its blocks; for
each method, with input_range=(0, 1) and without: the verified share of ``--per-class`` samples
of every class (p >= 0.9, and inside the box where one is given), and the milliseconds per
verified sample (total time over verified samples). Failures are summed up with their reasons.

Usage: python benchmarks/zoo.py [--data-root DIR] [--epochs 2] [--per-class 3] [--nets NAME ...]
"""
from __future__ import annotations

import time

import torch
from torch.utils.data import TensorDataset

from captum_invert import ForwardPassInversion, GeneralizedInversion, InversionError
from captum_invert.models import TrainConfig, accuracy, train
from captum_invert.models.zoo import ZOO, pad_to_32, recalibrate_batchnorm, zoo_model

from _common import data, parser  # noqa: E402 (benchmarks/ is on sys.path when run as a script)


def run_method(cls, model, per_class: int, box, reasons: dict):
    inv = cls(model)
    n_ok, t = 0, 0.0
    for c in range(10):
        t0 = time.perf_counter()
        try:
            inv.attribute(target=c, n_samples=per_class, seed=c, input_range=box)
            n_ok += per_class
        except InversionError as e:
            n_ok += e.n_verified
            for r, k in e.reasons.items():
                key = f"{cls.__name__} {'box' if box else 'free'}: {r}"
                reasons[key] = reasons.get(key, 0) + k
        except ValueError as e:  # proven out of reach before any work (a normalized head)
            key = f"{cls.__name__} {'box' if box else 'free'}: refused: {str(e)[:120]}"
            reasons[key] = reasons.get(key, 0) + per_class
        t += time.perf_counter() - t0
    return 100.0 * n_ok / (10 * per_class), 1000 * t / max(n_ok, 1)


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the convolutional nets and the MLP")
    ap.add_argument("--attn-epochs", type=int, default=8, help="epochs of ViT, DeiT, Mixer and Swin (slower to train)")
    ap.add_argument("--per-class", type=int, default=3)
    ap.add_argument("--nets", nargs="*", default=None, help=f"names from: {'; '.join(ZOO)}")
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny configurations")
    args = ap.parse_args()
    name, tr, te = data(args)
    tr = TensorDataset(pad_to_32(tr.tensors[0]), tr.tensors[1])
    te = TensorDataset(pad_to_32(te.tensors[0]), te.tensors[1])
    print(f"data: {name}, {len(tr)} train / {len(te)} test, 1x32x32; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.per_class} samples per class per cell")
    rows, reasons = [], {}
    for net in args.nets or list(ZOO):
        t0 = time.perf_counter()
        slow = any(k in net for k in ("vit", "deit", "mixer", "swin"))
        cfg = TrainConfig(epochs=args.attn_epochs if slow else args.epochs, lr=1e-3, optimizer="adamw",
                          batch_size=128)
        model = train(zoo_model(net, args.tiny), tr, cfg, progress=False)
        # running averages of a 2-epoch run are far from the data (MobileNetV3's momentum is 0.01)
        recalibrate_batchnorm(model, tr.tensors[0])
        t_train = time.perf_counter() - t0
        acc = accuracy(model, te)
        with torch.no_grad():  # do real images reach every class? the smallest share over classes
            p = torch.cat([model(te.tensors[0][i:i + 500]).softmax(1) for i in range(0, len(te), 500)])
        reach = min(float((p[te.tensors[1] == c, c] >= 0.9).float().mean()) for c in range(10))
        t0 = time.perf_counter()
        plan = GeneralizedInversion(model).plan
        t_plan = time.perf_counter() - t0
        kinds = "+".join(b.kind[0].upper() for b in plan.blocks)  # O: opaque, A: analytic
        row = [net, f"{100 * acc:.1f}", f"{100 * reach:.0f}", f"{t_plan:.2f}", kinds]
        for cls in (ForwardPassInversion, GeneralizedInversion):
            for box in ((0.0, 1.0), None):
                v, ms = run_method(cls, model, args.per_class, box, reasons)
                row += [f"{v:.0f}", f"{ms:.0f}"]
        rows.append(row)
        print(f"  {net}: trained/loaded in {t_train:.0f} s; " + " | ".join(row[1:]), flush=True)
    head = ["architecture", "test acc %", "real reach %", "plan s", "plan blocks", "F box %", "F box ms", "F free %",
            "F free ms", "G box %", "G box ms", "G free %", "G free ms"]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print("\nreal reach: the smallest share, over classes, of test images the net gives p >= 0.9 for their "
          "class; plan blocks: O opaque (Levenberg-Marquardt), A analytic; F ForwardPassInversion, "
          "G GeneralizedInversion; box: input_range=(0, 1); ms per verified sample")
    if reasons:
        print("\nfailures:")
        for r, k in sorted(reasons.items(), key=lambda kv: -kv[1]):
            print(f"  {k} x {r}")


if __name__ == "__main__":
    main()
