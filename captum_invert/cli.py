"""The ``captum-invert`` console script."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import List, Optional

__all__ = ["main", "run_demo"]


def _markdown_table(rows: List[dict], cols: List[str]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def run_demo(dataset: str = "digits", data_root=None, out="demo_out", samples_per_class: int = 16,
             epochs: int = 20, seed: int = 0, progress: bool = True) -> dict:
    """Train (or load cached) the seed paper's 1-, 2- and 6-layer SELU nets, invert every class
    with :class:`~captum_invert.BackwardPassInversion`, and write ``inversions.png``,
    ``metrics.json`` and ``metrics.md`` to ``out``.

    Returns:
        dict: the metrics (also written to ``metrics.json``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import torch
    from tqdm.auto import tqdm

    from . import BackwardPassInversion, InversionError
    from .datasets import load_dataset
    from .metrics import mean_pairwise_distance, nearest_distance, target_probability
    from .models import TrainConfig, accuracy, seed_fcnn, train
    from .visualization import plot_inversion_grid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tr = load_dataset(dataset, "train", data_root)
    te = load_dataset(dataset, "test", data_root)
    xtr, ytr = tr.tensors
    n_classes = int(ytr.max()) + 1
    in_features = xtr[0].numel()
    shape = tuple(xtr.shape[1:])
    cfg = TrainConfig(epochs=epochs, seed=seed)
    rows, table = [], []
    examples = torch.stack([xtr[(ytr == c).nonzero()[0, 0]] for c in range(n_classes)])
    models = {}
    for depth in (1, 2, 6):
        model = seed_fcnn(depth, in_features, n_classes, shape)
        models[depth] = train(model, tr, cfg, progress=progress)
    rows.append(("training\nexample", examples, target_probability(models[6], examples, torch.arange(n_classes))))
    for depth, model in models.items():
        inv = BackwardPassInversion(model)
        per_class, probs_first, n_ok, t_total = [], [], 0, 0.0
        pair, near, pt = [], [], []
        for c in tqdm(range(n_classes), desc=f"invert {depth}-layer", disable=not progress, leave=False):
            t0 = time.perf_counter()
            try:
                x = inv.attribute(target=c, n_samples=samples_per_class, seed=seed + c)
                ok = samples_per_class
            except InversionError as e:
                x, ok = e.partial, e.n_verified
            t_total += time.perf_counter() - t0
            n_ok += ok
            if len(x):
                p = target_probability(model, x, c)
                pt.append(p)
                pair.append(mean_pairwise_distance(x))
                near.append(nearest_distance(x, xtr))
                per_class.append(x[0])
                probs_first.append(float(p[0]))
            else:
                per_class.append(torch.zeros(shape))
                probs_first.append(float("nan"))
        rows.append((f"{depth}-layer", torch.stack(per_class), torch.tensor(probs_first)))
        n_req = samples_per_class * n_classes
        table.append({
            "model": f"{depth}-layer SELU",
            "accuracy": accuracy(model, te),
            "verified %": 100.0 * n_ok / n_req,
            "mean target prob": float(torch.cat(pt).mean()) if pt else float("nan"),
            "mean pairwise dist": float(sum(pair) / max(len(pair), 1)),
            "dist to nearest train": float(torch.cat(near).mean()) if near else float("nan"),
            "s / sample": t_total / n_req,
        })
    names = [str(i) for i in range(n_classes)]
    fig = plot_inversion_grid(rows, names, title=f"BackwardPassInversion on {dataset} "
                              "(row 1: a training image, p under the 6-layer net)")
    fig.savefig(out / "inversions.png", dpi=110)
    metrics = {"dataset": dataset, "train_size": len(tr), "test_size": len(te),
               "samples_per_class": samples_per_class, "epochs": epochs, "seed": seed,
               "models": table}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    cols = ["model", "accuracy", "verified %", "mean target prob", "mean pairwise dist",
            "dist to nearest train", "s / sample"]
    (out / "metrics.md").write_text(
        f"# BackwardPassInversion demo ({dataset}, {len(tr)} train / {len(te)} test)\n\n"
        + _markdown_table(table, cols)
    )
    return metrics


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="captum-invert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train the seed nets and invert every class")
    d.add_argument("--dataset", choices=["digits", "mnist"], default="digits",
                   help="digits: scikit-learn's bundled set (offline default); mnist: IDX files")
    d.add_argument("--data-root", default=None,
                   help="directory of MNIST IDX files (or set CAPTUM_INVERT_MNIST)")
    d.add_argument("--out", default="demo_out", help="output directory")
    d.add_argument("--samples-per-class", type=int, default=16)
    d.add_argument("--epochs", type=int, default=20)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.samples_per_class < 1 or args.epochs < 1:
            parser.error("--samples-per-class and --epochs must be >= 1")
        try:
            run_demo(args.dataset, args.data_root, args.out, args.samples_per_class,
                     args.epochs, args.seed, not args.no_progress)
        except (ValueError, FileNotFoundError) as e:
            print(f"captum-invert: error: {e}", file=sys.stderr)
            return 2
        print(Path(args.out, "metrics.md").read_text())
        print(f"wrote {os.path.join(args.out, 'inversions.png')}, metrics.json, metrics.md")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
