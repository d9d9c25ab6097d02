"""Readable prototypes: every optimizing captum-invert method with and without priors, and
torch-lucent's render_vis as the peer, on three nets trained here (the seed paper's 6-layer SELU
MLP, a BatchNorm CNN, a 3-block ViT), judged by an independent CNN with a "no digit" class.

For every net and method, 8 images of each of the 10 classes inside [0, 1]:
- verified: p(class) >= 0.9 on the audited net and inside the box;
- read / forced / rejected: the judge names the class / names it among the 10 digits only /
  says "no digit"; images within L2 1.0 of a training image (copies) never count as read;
- NN dist: mean L2 distance to the nearest training image of the class; Frechet: judge
  features against the held-out images of the same classes; diversity: mean pairwise L2
  distance of the 8 images of a class;
- ms / verified and ms / verified read image (every method on the same nets, in this run).

The first row of each net holds 8 held-out MNIST digits per class, scored the same way: the
figures real data reach (their diversity is what digits of one class differ by in pixels).
The row "DataPrior(match_histogram, diversity=10)" shows the trade-off of the diversity weight.

Writes prototypes_out/prototypes.md, .json and .png (rows = methods, columns = classes) and
prototypes_readme.png (no prior / data prior / lucent only).

Usage: python benchmarks/prototypes.py [--data-root DIR] [--per-class 8] [--nets mlp,cnn,vit]
       [--lucent-steps 512]   (needs the bench extra: pip install -e '.[bench]')
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from captum_invert import (ActivationMaximization, ForwardPassInversion, GeneralizedInversion, InversionError)
from captum_invert.blocks.plan import model_mode_guard
from captum_invert.metrics import class_probabilities, copies, judge_accuracy, prototype_report
from captum_invert.models import TrainConfig, accuracy, seed_fcnn, train, vit_mnist_small
from captum_invert.models.cnn import NO_DIGIT, bn_cnn, no_digit_images, train_judge
from captum_invert.priors import DataPrior
from captum_invert.visualization import plot_inversion_grid

from _common import data, parser  # noqa: E402 (benchmarks/ is on sys.path when run as a script)

BOX = (0.0, 1.0)


def nets(tr):
    return {
        "6-layer SELU MLP": train(seed_fcnn(6), tr, progress=False),
        "BatchNorm CNN": train(bn_cnn(), tr, TrainConfig(epochs=8, lr=1e-3, optimizer="adam"), progress=False),
        "ViT (3 blocks)": train(vit_mnist_small(depth=3), tr, TrainConfig(epochs=15, lr=1e-3, optimizer="adamw"),
                                progress=False),
    }


def lucent_render(model, labels, per_class, steps, small_transforms=False, seed=0):
    """render_vis for a class (FFT parameterization, Adam at 0.05), maximizing the class's logit;
    one batch of ``per_class`` images per class. Transforms: lucent's standard set (made for
    224-pixel images: pad 12, jitter 8 and 4, scale, rotate), or with ``small_transforms`` the
    same set scaled to 28 pixels (pad 2, jitter 2 and 2). Runs on a copy: lucent leaves its
    hooks on the model."""
    import numpy as np
    from lucent.optvis import objectives, param, render, transform

    np.random.seed(seed)  # lucent's transforms draw from numpy's global generator
    torch.manual_seed(seed)
    transforms = None
    if small_transforms:
        transforms = [transform.pad(2, mode="constant", constant_value=0.5), transform.jitter(2),
                      transform.random_scale([1 + (i - 5) / 50.0 for i in range(11)]),
                      transform.random_rotate(list(range(-10, 11)) + 5 * [0]), transform.jitter(2)]

    m = copy.deepcopy(model).eval()
    leaves = [n for n, mod in m.named_modules() if next(iter(mod.children()), None) is None]
    layer = leaves[-1].replace(".", "_")
    out = []
    for c in labels.unique().tolist():
        holder = {}

        def param_f():
            params, image_f = param.image(28, channels=1, batch=per_class, fft=True, decorrelate=False)
            holder["f"] = image_f
            return params, image_f

        render.render_vis(m, objectives.channel(layer, c), param_f, transforms=transforms, thresholds=(steps,),
                          show_image=False, progress=False, preprocess=False, fixed_image_size=28)
        with torch.no_grad():
            out.append(holder["f"]().detach().float())
    return torch.cat(out)


def run(fn):
    t0 = time.perf_counter()
    try:
        x = fn()
    except InversionError as e:
        x = e.result
    return x.detach().float(), time.perf_counter() - t0


def main():
    ap = parser(__doc__)
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--nets", default="mlp,cnn,vit")
    ap.add_argument("--lucent-steps", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="prototypes_out")
    args = ap.parse_args()
    name, tr, te = data(args)
    xtr, ytr = tr.tensors
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    judge = train_judge(tr)
    noise = no_digit_images(1000, generator=torch.Generator().manual_seed(12345))
    j_rej = float((class_probabilities(judge, noise).argmax(1) == NO_DIGIT).double().mean())
    print(f"data: {name}; judge: {100 * accuracy(judge, te):.1f}% on held-out digits, "
          f"says 'no digit' on {100 * j_rej:.1f}% of 1000 fresh noise/blob/grating images\n")
    labels = torch.arange(10).repeat_interleave(args.per_class)
    tgt = labels.tolist()
    s = args.seed
    prior = DataPrior(xtr)
    prior_hm = DataPrior(xtr, match_histogram=True)
    prior_div = DataPrior(xtr, match_histogram=True, diversity=10.0)
    real_x, real_y = te.tensors
    real_idx = torch.cat([(real_y == c).nonzero().squeeze(1)[: args.per_class] for c in range(10)])
    keys = {"mlp": "6-layer SELU MLP", "cnn": "BatchNorm CNN", "vit": "ViT (3 blocks)"}
    all_nets = nets(tr)
    table, rows, readme_rows = [], [], []
    for key in args.nets.split(","):
        net_name = keys[key]
        model = all_nets[net_name]
        print(f"{net_name}: test accuracy {100 * accuracy(model, te):.1f}%", flush=True)
        methods = [
            ("real test images (reference)", lambda: real_x[real_idx]),
            ("forward pass", lambda: ForwardPassInversion(model).attribute(
                target=tgt, input_range=BOX, seed=s, allow_unverified=True)),
            ("forward pass + DataPrior", lambda: ForwardPassInversion(model).attribute(
                target=tgt, input_range=BOX, seed=s, prior=prior, allow_unverified=True)),
            ("forward pass + DataPrior(match_histogram)", lambda: ForwardPassInversion(model).attribute(
                target=tgt, input_range=BOX, seed=s, prior=prior_hm, allow_unverified=True)),
            ("forward pass + DataPrior(match_histogram, diversity=10)", lambda: ForwardPassInversion(model).attribute(
                target=tgt, input_range=BOX, seed=s, prior=prior_div, allow_unverified=True)),
            ("forward pass + auto (no data)", lambda: ForwardPassInversion(model).attribute(
                target=tgt, input_range=BOX, seed=s, prior="auto", allow_unverified=True)),
            ("generalized", lambda: GeneralizedInversion(model).attribute(
                target=tgt, input_range=BOX, seed=s, allow_unverified=True)),
            ("generalized + DataPrior", lambda: GeneralizedInversion(model).attribute(
                target=tgt, input_range=BOX, seed=s, prior=prior, allow_unverified=True)),
            ("activation max.", lambda: ActivationMaximization(model).attribute(
                target=tgt, input_range=BOX, seed=s, allow_unverified=True)),
            ("activation max. + DataPrior", lambda: ActivationMaximization(model).attribute(
                target=tgt, input_range=BOX, seed=s, prior=prior, allow_unverified=True)),
            (f"lucent render_vis ({args.lucent_steps} steps)", lambda: lucent_render(
                model, labels, args.per_class, args.lucent_steps, seed=s)),
            ("lucent, transforms scaled to 28 px", lambda: lucent_render(
                model, labels, args.per_class, args.lucent_steps, True, seed=s)),
        ]
        for mname, fn in methods:
            x, dt = run(fn)
            with model_mode_guard(model), torch.no_grad():
                p = class_probabilities(model, x).gather(1, labels[:, None]).squeeze(1)
            ok = (p >= 0.9) & (x.flatten(1).amin(1) >= BOX[0]) & (x.flatten(1).amax(1) <= BOX[1])
            if mname.startswith("real"):  # held-out digits: the training set is the copy reference
                rep = prototype_report(x, labels, judge, xtr, ytr, NO_DIGIT)
            else:
                rep = prototype_report(x, labels, judge, torch.cat([xtr, te.tensors[0]]),
                                       torch.cat([ytr, te.tensors[1]]), NO_DIGIT)
            # read among verified images (a read image that does not verify is no prototype)
            good = ok & ~copies(x, xtr)
            n_read = 0
            if bool(good.any()):
                n_read = round(judge_accuracy(judge, x[good], labels[good], NO_DIGIT)["read"] * int(good.sum()))
            n = len(x)
            row = {"net": net_name, "method": mname, "verified": float(ok.double().mean()),
                   "read": rep["read"], "verified+read": n_read / n, "forced": rep["forced"],
                   "rejected": rep["rejected"], "copies": rep["copies"], "NN dist": rep["nn_dist"],
                   "Frechet": rep["frechet"], "diversity": rep["diversity"],
                   "ms / verified": 1000 * dt / max(int(ok.sum()), 1),
                   "ms / verified read": 1000 * dt / max(n_read, 1) if n_read else float("inf")}
            table.append(row)
            print(f"  {mname:34s} verified {row['verified']:.2f}  read {row['read']:.2f}  "
                  f"verified+read {row['verified+read']:.2f}  forced {row['forced']:.2f}  "
                  f"rejected {row['rejected']:.2f}  NN {row['NN dist']:.2f}  FD {row['Frechet']:.1f}  "
                  f"div {row['diversity']:.2f}  ms/verified {row['ms / verified']:.1f}  "
                  f"ms/verified read {row['ms / verified read']:.1f}", flush=True)
            first = x[:: args.per_class]
            entry = (f"{net_name}:\n{mname}", first, p[:: args.per_class])
            rows.append(entry)
            if mname in ("forward pass", "forward pass + DataPrior", "lucent, transforms scaled to 28 px"):
                readme_rows.append(entry)
        print()
    cols = list(table[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        lines.append("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    md = "\n".join(lines)
    print(md)
    (out / "prototypes.md").write_text(md + "\n")
    (out / "prototypes.json").write_text(json.dumps({"data": name, "judge_test_accuracy": accuracy(judge, te),
                                                     "judge_noise_reject": j_rej, "rows": table}, indent=2))
    classes = [str(i) for i in range(10)]
    plot_inversion_grid(rows, classes, title="Prototypes (p: the audited net's probability)",
                        value_range=BOX).savefig(
        out / "prototypes.png", dpi=80)
    plot_inversion_grid(readme_rows, classes, value_range=BOX,
                        title="No prior / DataPrior / lucent (p: the audited net's probability)").savefig(out / "prototypes_readme.png", dpi=80)
    print(f"\nwrote {out}/prototypes.md, .json, .png, prototypes_readme.png")


if __name__ == "__main__":
    main()
