"""Shared setup of the benchmark scripts: the --data-root argument and the train/test split."""
from __future__ import annotations

import argparse
import os

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
