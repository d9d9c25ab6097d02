"""Generation at scale: shards that are a function of (seed, index), torchrun ranks that make
the same union as one process, resume after a kill, and a manifest that catches corruption."""
import json
import os
import subprocess
import sys

import pytest
import torch

from captum_invert import generate
from captum_invert.generation import InversionDataset
from captum_invert.generation import ManifestError, verify_shards

ARGS = dict(targets="0-9", n_per_target=3, method="forward", shard_size=4, seed=0, input_range=(0, 1),
            input_shape=(1, 28, 28))


@pytest.fixture(scope="module")
def pt2(outside_cnn, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "cnn.pt2"
    ep = torch.export.export(outside_cnn, (torch.rand(2, 1, 28, 28),),
                             dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(path))
    return path


def _shard_bytes(out):
    d = out / "shards"
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.suffix == ".safetensors"}


@pytest.fixture(scope="module")
def one_process(pt2, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = generate(str(pt2), out, **ARGS)
    finally:
        torch.set_num_threads(threads)
    return out, m


def test_one_process_writes_verified_shards_and_a_manifest(one_process, outside_cnn):
    out, m = one_process
    assert m["complete"] and m["n_samples"] == 30 and m["failed"] == 0 and len(m["shards"]) == 8
    ds = InversionDataset(out)
    assert len(ds) == 30 and torch.equal(torch.bincount(ds.targets), torch.full((10,), 3))
    with torch.no_grad():
        p = outside_cnn(ds.inputs).softmax(1)
    assert bool((p[torch.arange(30), ds.targets] >= 0.9).all())
    assert bool(((ds.inputs >= 0) & (ds.inputs <= 1)).all())
    assert len({tuple(x.flatten()[:50].tolist()) for x in ds.inputs}) == 30  # no duplicates


def test_two_ranks_under_torchrun_make_the_same_union(one_process, pt2, tmp_path):
    out1, _ = one_process
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "captum_invert", "generate", str(pt2), "--method", "forward", "--targets", "0-9",
           "--n-per-target", "3", "--shard-size", "4", "--seed", "0", "--input-range", "0,1",
           "--input-shape", "1,28,28", "--threads", "1", "--out", str(out), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _shard_bytes(out) == _shard_bytes(out1)  # shard i is a function of (seed, i) only
    m = verify_shards(out)
    assert m["n_samples"] == 30


def test_killed_run_resumes_to_the_same_result(one_process, pt2, tmp_path):
    out1, _ = one_process
    out = tmp_path / "resumed"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(KeyboardInterrupt):
            generate(str(pt2), out, _stop_after=3, **ARGS)
        before = _shard_bytes(out)
        assert len(before) == 3 and not (out / "manifest.json").exists()
        stamps = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
        (out / "shards" / ".shard-00003.safetensors.tmp999").write_bytes(b"half a shard")  # a kill mid-write
        m = generate(str(pt2), out, **ARGS)
    finally:
        torch.set_num_threads(threads)
    after = _shard_bytes(out)
    assert all(after[k] == v for k, v in before.items())  # complete shards untouched
    assert all((out / "shards" / k).stat().st_mtime_ns == t for k, t in stamps.items() if k in before)
    assert after == _shard_bytes(out1) and m["n_samples"] == 30


def test_manifest_detects_corruption_and_other_arguments(one_process, pt2, tmp_path):
    out1, _ = one_process
    out = tmp_path / "copy"
    (out / "shards").mkdir(parents=True)
    for name in ("manifest.json", "config.json"):
        (out / name).write_bytes((out1 / name).read_bytes())
    for k, v in _shard_bytes(out1).items():
        (out / "shards" / k).write_bytes(v)
    verify_shards(out)
    p = out / "shards" / "shard-00002.safetensors"
    b = bytearray(p.read_bytes())
    b[-1] ^= 1
    p.write_bytes(bytes(b))
    with pytest.raises(ManifestError, match="shard-00002.*corrupted"):
        InversionDataset(out)
    with pytest.raises(ManifestError, match="other arguments.*n_per_target"):
        generate(str(pt2), out, **dict(ARGS, n_per_target=4))
    assert json.loads((out / "config.json").read_text())["n_per_target"] == 3
