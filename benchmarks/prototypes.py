"""Readable prototypes, with and without data: every optimizing captum-invert method and recipe,
torch-lucent's render_vis and horama's MaCo as peers, on grey and colour nets trained here,
judged by independent nets with a "no digit" class. One run, the same nets for every method.

Nets (``--nets``):
- grey 28x28 MNIST: the seed paper's 6-layer SELU MLP (``mlp``), a BatchNorm CNN (``cnn``), a
  3-block ViT (``vit``); judges: :func:`~captum_invert.models.cnn.judge_cnn` variants 0 and 1;
- colour 32x32 MNIST (random foreground/background colours and textures,
  :func:`~captum_invert.datasets.colour_digits`): a torchvision ResNet-18 with BatchNorm
  (``resnet``), a timm ViT (``cvit``), a timm ConvNeXt (``convnext``); judges:
  :func:`~captum_invert.models.colour.colour_judge` variants 0 and 1.

Rows (``--rows``): ``free`` (no training data: no prior, ``prior='auto'``, DeepInversion's and
Plug-In Inversion's published recipes as configurations of the library's parts, lucent, MaCo)
and ``data`` (grey nets only: the data priors, generalized inversion and activation maximization).

For every net and method, ``--per-class`` images of each of the 10 classes inside [0, 1]:
- verified: p(class) >= 0.9 on the audited net and inside the box;
- read: verified, no copy (L2 > 1.0 from every training image) and named as the class by the
  first judge; agree: the same, named by both judges (:func:`~captum_invert.metrics.judge_agreement`);
  rejected: the first judge says "no digit";
- diversity: mean pairwise L2 distance of the images of a class; copies: within L2 1.0 of a
  training image;
- ms / verified read image: wall time of the method over the verified and read images.

The first row of each net holds held-out digits, scored the same way.

MaCo: horama downloads its ImageNet magnitude spectrum at run time; offline, this script writes
a 1/f spectrum in its place (the "natural" magnitude of MaCo's paper), and says so. MaCo makes
one image per call with crops of its canvas; here the canvas is the model's input size, the crops
cover 80-100% of it, and the values are in [0, 1].

Writes prototypes_out/prototypes.md, .json and one figure per net, prototypes_<net>.png (rows =
methods, columns = classes).

Usage: python benchmarks/prototypes.py [--data-root DIR] [--per-class 8] [--nets mlp,cnn,vit,resnet,cvit,convnext]
       [--rows free,data] [--lucent-steps 512] [--maco-per-class 2]   (needs: pip install -e '.[bench]')
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

from captum_invert import ActivationMaximization, ForwardPassInversion, GeneralizedInversion, InversionError
from captum_invert.blocks.plan import model_mode_guard
from captum_invert.datasets import colour_digits
from captum_invert.metrics import class_diversity, class_probabilities, copies, judge_accuracy, judge_agreement
from captum_invert.models import TrainConfig, accuracy, seed_fcnn, train, vit_mnist_small
from captum_invert.models.cnn import NO_DIGIT, bn_cnn, train_judge
from captum_invert.models.colour import colour_model, train_colour_judge
from captum_invert.priors import Background, DataPrior, FourierParam, Prior, auto_prior, deepinversion_prior, plugin_inversion_prior
from captum_invert.visualization import plot_inversion_grid

from _common import data, parser  # noqa: E402 (benchmarks/ is on sys.path when run as a script)

BOX = (0.0, 1.0)
GREY = {"mlp": "6-layer SELU MLP", "cnn": "BatchNorm CNN", "vit": "ViT (3 blocks)"}
COLOUR = {"resnet": "resnet18 (torchvision)", "cvit": "vit (timm)", "convnext": "convnext_atto (timm)"}
COLOUR_CFG = {"resnet": TrainConfig(epochs=6, lr=1e-3, optimizer="adam"),
              "cvit": TrainConfig(epochs=15, lr=1e-3, optimizer="adamw"),
              "convnext": TrainConfig(epochs=20, lr=3e-4, optimizer="adamw", weight_decay=0.05)}


def grey_net(key, tr):
    if key == "mlp":
        return train(seed_fcnn(6), tr, progress=False)
    if key == "cnn":
        return train(bn_cnn(), tr, TrainConfig(epochs=8, lr=1e-3, optimizer="adam"), progress=False)
    return train(vit_mnist_small(depth=3), tr, TrainConfig(epochs=15, lr=1e-3, optimizer="adamw"), progress=False)


def rebuilt(prior, param=None, penalties=None):
    """``prior`` with another parameterization and/or penalties, its other parts and options kept."""
    return Prior(param or prior.param, prior.transforms, prior.penalties if penalties is None else penalties,
                 steps=prior.steps, lr=prior.lr, copies=prior.copies, coarse=prior.coarse,
                 objective=prior.objective, schedule=prior.schedule, betas=prior.betas)


def free_chroma(prior):
    """``prior`` with its Fourier chroma free (the auto prior before ``AUTO_CHROMA_DECAY``)."""
    p = prior.parameterization()
    return rebuilt(prior, param=FourierParam(decay=p.decay, decorrelate=p.decorrelate, init_std=p.init_std))


def without_background(prior):
    """``prior`` without its :class:`~captum_invert.priors.Background` (the auto prior before
    ``AUTO_BACKGROUND``)."""
    return rebuilt(prior, penalties=[q for q in prior.penalties if not isinstance(q, Background)])


def last_leaf(model):
    leaves = [n for n, mod in model.named_modules() if next(iter(mod.children()), None) is None]
    return leaves[-1].replace(".", "_")


def lucent_render(model, labels, per_class, steps, shape, seed=0):
    """render_vis for a class (FFT parameterization, colour decorrelation on colour nets, Adam at
    0.05) on the class's logit, one batch of ``per_class`` images per class, with lucent's
    standard transforms scaled to the image size. Runs on a copy: lucent leaves its hooks."""
    import numpy as np
    from lucent.optvis import objectives, param, render, transform

    np.random.seed(seed)  # lucent's transforms draw from numpy's global generator
    torch.manual_seed(seed)
    c, h, _ = shape
    k = max(1, round(2 * h / 28))
    transforms = [transform.pad(k, mode="constant", constant_value=0.5), transform.jitter(k),
                  transform.random_scale([1 + (i - 5) / 50.0 for i in range(11)]),
                  transform.random_rotate(list(range(-10, 11)) + 5 * [0]), transform.jitter(k)]
    m = copy.deepcopy(model).eval()
    layer = last_leaf(m)
    out = []
    for cls in labels.unique().tolist():
        holder = {}

        def param_f():
            params, image_f = param.image(h, channels=c, batch=per_class, fft=True, decorrelate=c == 3)
            holder["f"] = image_f
            return params, image_f

        render.render_vis(m, objectives.channel(layer, cls), param_f, transforms=transforms, thresholds=(steps,),
                          show_image=False, progress=False, preprocess=False, fixed_image_size=h)
        with torch.no_grad():
            out.append(holder["f"]().detach().float())
    return torch.cat(out)


class _Grey(nn.Module):
    """A grey model seen as a colour one (MaCo draws 3 channels): the channels' mean."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x.mean(1, keepdim=True))


def maco_render(model, labels, shape, steps=256, seed=0):
    """horama's MaCo, one call per image, on the class's logit (see the module docstring)."""
    import numpy as np
    import horama
    from horama import maco_fv

    maco_fv.tqdm = lambda it, **kw: it  # horama draws a progress bar per image
    c, h, _ = shape
    spec = Path(maco_fv.MACO_SPECTRUM_FILENAME)
    if not spec.is_file():  # offline: the natural 1/f magnitude in place of ImageNet's
        fy = np.fft.fftfreq(h)[:, None]
        fx = np.fft.rfftfreq(h)[None, :]
        mag = 1.0 / np.maximum(np.sqrt(fx ** 2 + fy ** 2), 1.0 / h)
        np.save(spec, np.repeat(mag[None].astype(np.float32), 3, 0))
    net = copy.deepcopy(model).eval()
    if c == 1:
        net = _Grey(net)
    torch.manual_seed(seed)
    out = []
    for cls in labels.tolist():
        img, _ = horama.maco(lambda x, cls=cls: net(x)[:, cls].mean(), total_steps=steps, learning_rate=1.0,
                             image_size=h, model_input_size=h, values_range=BOX, crops_per_iteration=6,
                             box_size=(0.8, 1.0), device="cpu", noise=0.05)
        img = img.detach().float()
        out.append(img.mean(0, keepdim=True) if c == 1 else img)
    return torch.stack(out)


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
    ap.add_argument("--nets", default="mlp,cnn,vit,resnet,cvit,convnext")
    ap.add_argument("--rows", default="free,data")
    ap.add_argument("--lucent-steps", type=int, default=512)
    ap.add_argument("--maco-per-class", type=int, default=2)
    ap.add_argument("--maco-steps", type=int, default=256)
    ap.add_argument("--only", default="", help="comma-separated name parts: run only the rows whose "
                    "method name contains one (the real images are always shown)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--before", default="", help="comma-separated: 'chroma': on colour nets also the auto prior of "
                    "the release before, whose chroma was free (FourierParam without chroma_decay); 'background': "
                    "on grey nets also the auto prior without its Background term")
    ap.add_argument("--out", default="prototypes_out")
    args = ap.parse_args()
    name, tr, te = data(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.chdir(out)  # horama's spectrum file lands here
    rows_kind = set(args.rows.split(","))
    per = args.per_class
    labels = torch.arange(10).repeat_interleave(per)
    maco_labels = torch.arange(10).repeat_interleave(args.maco_per_class)
    tgt, s = labels.tolist(), args.seed
    sets = {}
    table = []
    for key in args.nets.split(","):
        colour = key in COLOUR
        if colour:
            if "colour" not in sets:
                ctr, cte = colour_digits(tr, seed=0), colour_digits(te, seed=1)
                sets["colour"] = (ctr, cte, [train_colour_judge(ctr, 0), train_colour_judge(ctr, 1)])
            dtr, dte, judges = sets["colour"]
            model = train(colour_model(COLOUR[key]), dtr, COLOUR_CFG[key], progress=False)
            net_name = f"colour {COLOUR[key]}"
        else:
            if "grey" not in sets:
                sets["grey"] = (tr, te, [train_judge(tr), train_judge(tr, variant=1)])
            dtr, dte, judges = sets["grey"]
            model = grey_net(key, tr)
            net_name = GREY[key]
        shape = tuple(dtr.tensors[0].shape[1:])
        xtr, ytr = dtr.tensors
        real_x, real_y = dte.tensors
        real_idx = torch.cat([(real_y == c).nonzero().squeeze(1)[:per] for c in range(10)])
        print(f"{net_name}: test accuracy {100 * accuracy(model, dte):.1f}%; judges "
              + ", ".join(f"{100 * accuracy(j, dte):.1f}%" for j in judges), flush=True)
        fp = lambda prior: (lambda: ForwardPassInversion(model).attribute(  # noqa: E731
            target=tgt, input_range=BOX, seed=s, prior=prior, allow_unverified=True))
        methods = [("real test images (reference)", lambda: real_x[real_idx], labels)]
        if "free" in rows_kind:
            methods += [
                ("forward pass, no prior", fp(None), labels),
                ("forward pass + auto (no data)", fp("auto"), labels),
            ]
            if colour and "chroma" in args.before.split(","):
                methods.append(("auto with free chroma (before)", fp(free_chroma(auto_prior(model, shape))), labels))
            if not colour and "background" in args.before.split(","):
                methods.append(("auto without Background (before)",
                                fp(without_background(auto_prior(model, shape, input_range=BOX))), labels))
            methods += [
                ("DeepInversion recipe (no data)", fp(deepinversion_prior(shape, flips=False)), labels),
                ("Plug-In Inversion recipe (no data)", fp(plugin_inversion_prior(shape, flips=False)), labels),
                (f"lucent render_vis ({args.lucent_steps} steps)",
                 lambda: lucent_render(model, labels, per, args.lucent_steps, shape, seed=s), labels),
            ]
            if args.maco_per_class:
                methods.append((f"horama MaCo ({args.maco_steps} steps, 1/f magnitude)",
                                lambda: maco_render(model, maco_labels, shape, args.maco_steps, seed=s), maco_labels))
        if "data" in rows_kind and not colour:
            prior, prior_hm = DataPrior(xtr), DataPrior(xtr, match_histogram=True)
            methods += [
                ("forward pass + DataPrior", fp(prior), labels),
                ("forward pass + DataPrior(match_histogram)", fp(prior_hm), labels),
                ("forward pass + DataPrior(match_histogram, diversity=10)",
                 fp(DataPrior(xtr, match_histogram=True, diversity=10.0)), labels),
                ("generalized", lambda: GeneralizedInversion(model).attribute(
                    target=tgt, input_range=BOX, seed=s, allow_unverified=True), labels),
                ("generalized + DataPrior", lambda: GeneralizedInversion(model).attribute(
                    target=tgt, input_range=BOX, seed=s, prior=prior, allow_unverified=True), labels),
                ("activation max.", lambda: ActivationMaximization(model).attribute(
                    target=tgt, input_range=BOX, seed=s, allow_unverified=True), labels),
                ("activation max. + DataPrior", lambda: ActivationMaximization(model).attribute(
                    target=tgt, input_range=BOX, seed=s, prior=prior, allow_unverified=True), labels),
            ]
        if args.only:
            keep = [k.strip() for k in args.only.split(",") if k.strip()]
            methods = [m for m in methods if m[0].startswith("real") or any(k in m[0] for k in keep)]
        grid = []
        for mname, fn, lab in methods:
            x, dt = run(fn)
            with model_mode_guard(model), torch.no_grad():
                p = class_probabilities(model, x).gather(1, lab[:, None]).squeeze(1)
            ok = (p >= 0.9) & (x.flatten(1).amin(1) >= BOX[0]) & (x.flatten(1).amax(1) <= BOX[1])
            ref = xtr if mname.startswith("real") else torch.cat([xtr, real_x])
            cp = copies(x, ref)
            good = ok & ~cp
            n = len(x)
            read = agree = rejected = 0.0
            if bool(good.any()):
                read = judge_accuracy(judges[0], x[good], lab[good], NO_DIGIT)["read"] * int(good.sum()) / n
                agree = judge_agreement(judges, x[good], lab[good])["agree"] * int(good.sum()) / n
            rejected = judge_accuracy(judges[0], x, lab, NO_DIGIT)["rejected"]
            n_read = round(read * n)
            row = {"net": net_name, "method": mname, "verified": float(ok.double().mean()), "read": read,
                   "agree": agree, "rejected": rejected, "copies": float(cp.double().mean()),
                   "diversity": class_diversity(x, lab), "ms / image": 1000 * dt / n,
                   "ms / verified read": 1000 * dt / n_read if n_read else float("inf")}
            table.append(row)
            print(f"  {mname:44s} verified {row['verified']:.2f}  read {read:.2f}  agree {agree:.2f}  "
                  f"rejected {rejected:.2f}  copies {row['copies']:.2f}  div {row['diversity']:.2f}  "
                  f"ms/image {row['ms / image']:.0f}  ms/verified read {row['ms / verified read']:.0f}", flush=True)
            first = torch.stack([x[(lab == c).nonzero()[0, 0]] for c in range(10)])
            grid.append((mname, first, torch.stack([p[(lab == c).nonzero()[0, 0]] for c in range(10)])))
        plot_inversion_grid(grid, [str(i) for i in range(10)], value_range=BOX,
                            title=f"{net_name} (p: the audited net's probability)").savefig(
            f"prototypes_{key}.png", dpi=80)
        print(flush=True)
    cols = list(table[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        lines.append("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) and math.isfinite(v) else
                                       ("—" if isinstance(v, float) else str(v)) for v in r.values()) + " |")
    md = "\n".join(lines)
    print(md)
    Path("prototypes.md").write_text(md + "\n")
    Path("prototypes.json").write_text(json.dumps({"data": name, "per_class": per, "rows": table}, indent=2))
    print(f"\nwrote {out}/prototypes.md, .json, prototypes_<net>.png")


if __name__ == "__main__":
    main()
