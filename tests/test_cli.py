import json

import pytest

from captum_invert.cli import main


def test_demo_writes_figure_and_tables(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["demo", "--out", str(out), "--samples-per-class", "3", "--epochs", "2", "--no-progress"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert [r["model"] for r in m["models"]] == ["1-layer SELU", "2-layer SELU", "6-layer SELU"]
    assert all(r["verified %"] == 100.0 and r["mean target prob"] >= 0.9 for r in m["models"])
    assert (out / "inversions.png").stat().st_size > 10_000
    assert "| 6-layer SELU |" in (out / "metrics.md").read_text()


def test_demo_mnist_needs_a_data_root(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CAPTUM_INVERT_MNIST", raising=False)
    assert main(["demo", "--dataset", "mnist", "--out", str(tmp_path)]) == 2
    assert "data_root" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--samples-per-class", "0"])
