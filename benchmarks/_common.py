"""Shared setup of the benchmark scripts: the --data-root argument and the train/test split."""
from __future__ import annotations

import argparse
import functools
import os

from captum_invert.blocks.plan import model_mode_guard
from captum_invert.datasets import DATA_ENV, load_dataset


def parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser with ``--data-root`` (default: ``$CAPTUM_INVERT_MNIST``)."""
    ap = argparse.ArgumentParser(description=doc)
    ap.add_argument("--data-root", default=os.environ.get(DATA_ENV),
                    help="directory of the MNIST IDX files (else scikit-learn's digits)")
    return ap


def data(args):
    """``(name, train, test)``: MNIST when ``args.data_root`` is set, else the digits."""
    name = "mnist" if args.data_root else "digits"
    return name, load_dataset(name, "train", args.data_root), load_dataset(name, "test", args.data_root)


def frozen(fn):
    """Run ``fn(model, ...)`` with the model in eval mode and its parameters' ``requires_grad``
    off, restored afterwards (the library's own guard)."""

    @functools.wraps(fn)
    def run(model, *args, **kwargs):
        with model_mode_guard(model):
            return fn(model, *args, **kwargs)

    return run
