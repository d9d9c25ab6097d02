"""`captum-invert harden MODEL`: a user's checkpoint (factory + weights, or TorchScript) is
hardened; the file is untouched, the hardened weights load into the same architecture and
differ, and the report has a row per round."""
import json

import pytest
import torch

from captum_invert.cli import main

FAST = ["--dataset", "digits", "--rounds", "1", "--per-class", "4", "--epochs", "1", "--attack-per-class", "2",
        "--adam-steps", "20", "--no-progress"]


@pytest.fixture
def user_net(tmp_path, digits, user_factory):
    from captum_invert.models import TrainConfig, train

    torch.manual_seed(0)
    net = train(user_factory.make(), digits[0], TrainConfig(epochs=3, lr=1e-3, optimizer="adam"),
                progress=False).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    return net


def _check(out, net, make):
    rep = json.loads((out / "report.json").read_text())
    assert [r["round"] for r in rep["rounds"]] == [0, 1] and rep["rounds"][1]["kept"] > 0
    assert "| round |" in (out / "report.md").read_text()
    sd = torch.load(out / "hardened_state_dict.pt", weights_only=True)
    fresh = make()
    fresh.load_state_dict(sd)  # the same architecture
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), net.state_dict().values()))
    return rep


def test_harden_factory_with_weights_and_distance_criterion(tmp_path, user_net, user_factory):
    w = (tmp_path / "w.pt").read_bytes()
    out = tmp_path / "o"
    assert main(["harden", "usernets:make", "--weights", str(tmp_path / "w.pt"), "--no-judge",
                 "--out", str(out)] + FAST) == 0
    rep = _check(out, user_net, user_factory.make)
    assert rep["criterion"] == "distance" and (tmp_path / "w.pt").read_bytes() == w


def test_harden_torchscript_with_a_judge(tmp_path, user_net, user_factory):
    ts = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(user_net), ts)
    out = tmp_path / "o"
    assert main(["harden", str(ts), "--judge-epochs", "1", "--out", str(out)] + FAST) == 0
    rep = _check(out, user_net, user_factory.make)
    assert rep["criterion"] == "judge" and 0 <= rep["judge_accuracy"] <= 1


def test_harden_bad_arguments(tmp_path, user_net, capsys):
    assert main(["harden", "usernets:make", "--weights", str(tmp_path / "w.pt"), "--rounds", "-1",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--rounds" in capsys.readouterr().err
    assert main(["harden", "usernets:make", "--no-judge", "--judge", "x.ts"]) == 2
    assert "exclude" in capsys.readouterr().err


def test_harden_on_an_image_folder(tmp_path, user_net, user_factory):
    from tests.test_datasets import _image_folder

    root = _image_folder(tmp_path / "imgs", n_per_class=20, classes=tuple("abcdefghij"))
    out = tmp_path / "o"
    args = [a if a != "digits" else str(root) for a in FAST]
    # a model that expects normalised inputs: the data stays pixels, the saved weights are the model's
    assert main(["harden", "usernets:make", "--weights", str(tmp_path / "w.pt"), "--no-judge",
                 "--normalize", "0.5/0.5", "--out", str(out)] + args) == 0
    rep = _check(out, user_net, user_factory.make)
    assert rep["dataset"] == str(root) and rep["normalize"] == [[0.5], [0.5]]
