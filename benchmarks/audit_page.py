"""The audit page of a small ReLU CNN trained on the bundled digits, with the built-in judge,
rendered in headless Chromium: writes ``report.html`` / ``report.json`` to ``--out`` and a
screenshot (the figure of the README and the docs).

    python benchmarks/audit_page.py [--out audit_demo] [--screenshot docs/figures/audit_page.png]

Needs Playwright (the dev extra) and Debian's ``chromium``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import time

import torch
from torch import nn

from captum_invert import audit
from captum_invert.datasets import load_dataset
from captum_invert.models import TrainConfig, train, train_judge


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="audit_demo")
    ap.add_argument("--screenshot", default="docs/figures/audit_page.png")
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--height", type=int, default=2000, help="pixels of the page in the screenshot")
    args = ap.parse_args()
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 7 * 7, 10))
    net = train(net, tr, TrainConfig(epochs=10, lr=1e-3, optimizer="adam"), progress=False)
    judge = train_judge(tr, epochs=8, progress=False)
    t0 = time.perf_counter()
    rep = audit(net, data=te, judge=judge, per_class=args.per_class, prototypes_per_class=2, progress=True,
                model_info={"spec": "ReLU CNN on the bundled digits (benchmarks/audit_page.py)"})
    paths = rep.save(args.out)
    print(f"audit: {time.perf_counter() - t0:.1f} s; wrote {paths['html']}")
    for c in rep.data["classes"]:
        print({k: c.get(k) for k in ("class", "real_reach", "fooling_verified", "fooling_ms_per_sample",
                                     "prototypes_judge_read", "prototypes_data_judge_read")})
    if args.screenshot:
        from playwright.sync_api import sync_playwright

        exe = shutil.which("chromium") or shutil.which("chromium-browser")
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=flags)
            page = browser.new_page(viewport={"width": 1280, "height": args.height})
            page.goto("file://" + os.path.abspath(paths["html"]))
            page.screenshot(path=args.screenshot)
            browser.close()
        print(f"wrote {args.screenshot}")


if __name__ == "__main__":
    main()
