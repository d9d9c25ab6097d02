"""Generation at scale: one process against two torchrun ranks (one thread each), in one run.

A ReLU/MaxPool CNN is trained briefly on MNIST (or the digits), exported with torch.export to
a .pt2 file, and ``captum-invert generate`` writes ``--n-per-class`` verified inversions of each
of the 10 classes inside [0, 1], first as one process, then as ``torchrun --nproc_per_node=2``.
A second run with ``--big`` samples per class amortizes the start-up. Printed: wall seconds of
each (torch import, model load and rendezvous included), the generation seconds (the shard
loop, from the manifest), the speed-ups, and the checks on the first two-rank output: every sample verifies on the original model, no duplicates, the manifest's
hashes match, and the shards equal the single process's byte for byte.

Usage: python benchmarks/generate_scaling.py [--data-root DIR] [--n-per-class 24] [--shard-size 8]
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from captum_invert.generation import InversionDataset
from captum_invert.generation import verify_shards
from captum_invert.models import TrainConfig, accuracy, train

from _common import data, parser  # noqa: E402 (benchmarks/ is on sys.path when run as a script)


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(32 * 7 * 7, 64), nn.Linear(64, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def run(nproc: int, pt2: Path, out: Path, args, n_per_class=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_port=29571",
           "-m", "captum_invert", "generate", str(pt2), "--method", "forward", "--targets", "0-9",
           "--n-per-target", str(n_per_class or args.n_per_class), "--shard-size", str(args.shard_size), "--seed", "0",
           "--input-range", "0,1", "--input-shape", "1,28,28", "--threads", "1", "--out", str(out),
           "--no-progress"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return time.perf_counter() - t0, json.loads((out / "manifest.json").read_text())["seconds"]


def main() -> None:
    ap = parser(__doc__.splitlines()[0])
    ap.add_argument("--n-per-class", type=int, default=24)
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--big", type=int, default=200, help="samples per class of the second, larger run")
    args = ap.parse_args()
    name, tr, te = data(args)
    model = train(CNN(), tr, TrainConfig(epochs=3, lr=1e-3, optimizer="adam"), progress=False)
    print(f"data: {name}; CNN test accuracy {100 * accuracy(model, te):.1f}%; {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pt2 = tmp / "cnn.pt2"
        ep = torch.export.export(model, (torch.rand(2, 1, 28, 28),), dynamic_shapes=({0: torch.export.Dim("b")},))
        torch.export.save(ep, str(pt2))
        t1, g1 = run(1, pt2, tmp / "one", args)
        t2, g2 = run(2, pt2, tmp / "two", args)
        b1, h1 = run(1, pt2, tmp / "big1", args, args.big)
        b2, h2 = run(2, pt2, tmp / "big2", args, args.big)
        m = verify_shards(tmp / "two")  # every shard's sha256 against the manifest
        ds = InversionDataset(tmp / "two")
        with torch.no_grad():
            p = model(ds.inputs).softmax(1)
        ok = (p[torch.arange(len(ds)), ds.targets] >= 0.9) & (ds.inputs.flatten(1).amin(1) >= 0) & (
            ds.inputs.flatten(1).amax(1) <= 1)
        unique = len(torch.unique(ds.inputs.flatten(1), dim=0))
        same = all((tmp / "one" / r["file"]).read_bytes() == (tmp / "two" / r["file"]).read_bytes()
                   for r in m["shards"])
        per_class = torch.bincount(ds.targets, minlength=10).tolist()
    print("| samples | ranks x threads | wall s (with start-up) | generation s | speed-up (wall / generation) |")
    print("|---|---|---|---|---|")
    for n, (a, b), (c, d) in ((10 * args.n_per_class, (t1, g1), (t2, g2)), (10 * args.big, (b1, h1), (b2, h2))):
        print(f"| {n} | 1 x 1 | {a:.1f} | {b:.1f} | 1.00 / 1.00 |")
        print(f"| {n} | 2 x 1 | {c:.1f} | {d:.1f} | {a / c:.2f} / {b / d:.2f} |")
    print(f"two ranks: {len(ds)} samples ({m['failed']} failed), per class {per_class}; verified on the model: "
          f"{int(ok.sum())}/{len(ds)}; distinct: {unique}; manifest hashes match: yes; "
          f"shards identical to one process: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
