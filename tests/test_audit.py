"""`captum-invert audit`: the figures, the page, and the page in a real browser (headless Chromium
driven by Playwright)."""
import json
import os
import shutil

import pytest
import torch

from captum_invert import audit
from captum_invert.cli import main
from captum_invert.datasets import load_dataset

SECTIONS = ("summary", "fooling", "prototypes", "real-data", "distribution", "regions", "hardening", "settings")


@pytest.fixture(scope="module")
def digits_test():
    return load_dataset("digits", "test")


@pytest.fixture(scope="module")
def relu_cnn():
    """A ReLU/MaxPool CNN as a chain of modules: piecewise-linear, so it has certified regions."""
    from torch import nn

    from tests.conftest import fit_on_digits

    torch.manual_seed(0)
    return fit_on_digits(nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(),
                                       nn.Linear(6 * 7 * 7, 10)))


@pytest.fixture(scope="module")
def report(relu_cnn, digits_test):
    return audit(relu_cnn, data=digits_test, classes=[0, 3], per_class=2, prototypes_per_class=1, seed=0,
                 progress=False)


def test_every_image_is_verified_and_the_figures_are_measured(report, relu_cnn, digits_test):
    outside_cnn = relu_cnn
    d = report.data
    assert [c["class"] for c in d["classes"]] == [0, 3]
    for (section, c), x in report.images.items():
        assert float(x.min()) >= 0 and float(x.max()) <= 1  # the pixel box
        with torch.no_grad():
            p = outside_cnn(x).softmax(1)
        if section == "distribution":
            a, b = d["distribution"]["classes"]
            assert float((p[:, [a, b]] - 0.5).abs().max()) <= 0.02
        else:
            assert float(p[:, c].min()) >= 0.9, section
    x, y = digits_test.tensors
    with torch.no_grad():
        p = outside_cnn(x).softmax(1)
    for row in d["classes"]:
        c = row["class"]
        assert row["real_reach"] == pytest.approx(float((p[y == c, c] >= 0.9).double().mean()))
        assert row["fooling_verified"] == 2 and row["fooling_nearest_real_l2"] > 0
        assert row["prototypes_verified"] == 1 and row["prototypes_data_verified"] == 1
        assert row["flag_noise_only"] is False
    assert d["real_data"]["accuracy"] == pytest.approx(float((p.argmax(1) == y).double().mean()))
    # a ReLU/MaxPool CNN is piecewise-linear: each class gets a certified region
    assert all(r["radius_l2"] > 0 for r in d["regions"].values())
    assert len(d["model"]["state_dict_sha256"]) == 64 and d["settings"]["seed"] == 0
    json.loads(report.to_json())  # strict JSON


def test_the_page_is_self_contained(report, tmp_path):
    paths = report.save(tmp_path)
    page = open(paths["html"], encoding="utf-8").read()
    for sid in SECTIONS:
        assert f'id="{sid}"' in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert page.count("data:image/png;base64,") == sum(min(len(x), 8) for x in report.images.values())
    assert json.loads(open(paths["json"]).read())["classes"] == report.data["classes"]


def test_a_budget_skips_sections_and_says_so(outside_cnn):
    rep = audit(outside_cnn, input_shape=(1, 28, 28), classes=[1, 2], budget_s=1e-6, progress=False)
    skipped = {s["section"] for s in rep.data["skipped"]}
    assert {"fooling inputs", "prototypes", "distribution target", "certified regions"} <= skipped
    assert "budget" in rep.to_html() and not rep.images


def test_a_model_without_regions_is_said_so(outside_cnn):
    rep = audit(outside_cnn, input_shape=(1, 28, 28), classes=[1, 2], per_class=1, prototypes_per_class=0,
                progress=False)  # functional torch.relu: not a chain of modules
    assert rep.data["regions"] is None
    assert any(s["section"] == "certified regions" and "chain of modules" in s["reason"] for s in rep.data["skipped"])


@pytest.mark.parametrize("kw, match", [
    (dict(harden=True), "needs `data`"),
    (dict(classes=[0, 12]), "`classes` must be class indices in \\[0, 10\\)"),
    (dict(per_class=0), "`per_class` must be an int >= 1"),
    (dict(budget_s=-1), "`budget_s` must be a positive number"),
])
def test_bad_arguments_are_clear_errors(outside_cnn, kw, match):
    with pytest.raises(ValueError, match=match):
        audit(outside_cnn, input_shape=(1, 28, 28), progress=False, **kw)


def test_the_command_line_on_an_image_folder(tmp_path, outside_cnn):
    from tests.test_datasets import _image_folder

    root = _image_folder(tmp_path / "imgs", n_per_class=5, classes=tuple("abcd"))
    path = tmp_path / "cnn.ts"
    torch.jit.save(torch.jit.script(outside_cnn), str(path))
    out = tmp_path / "audit"
    assert main(["audit", str(path), "--data", str(root), "--classes", "1,2", "--per-class", "2",
                 "--prototypes-per-class", "1", "--judge", str(path), "--out", str(out), "--no-progress"]) == 0
    d = json.loads((out / "report.json").read_text())
    assert d["model"]["kind"] == "torchscript" and d["real_data"]["n"] == 20
    assert [c["fooling_verified"] for c in d["classes"]] == [2, 2]
    # the model as its own judge reads every verified prototype as its class
    assert all(c["prototypes_judge_read"] == 1.0 for c in d["classes"] if c["prototypes_verified"])
    assert d["settings"]["judge"] is not None
    assert (out / "report.html").stat().st_size > 1000


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_the_page_in_a_real_browser(report, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the dev extra) is not installed")
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium on this machine: `apt-get install chromium` (.ci/run installs it)")
    paths = report.save(tmp_path)
    errors = []
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=flags)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto("file://" + os.path.abspath(paths["html"]))
            page.wait_for_load_state("load")
            n_img, n_loaded = page.evaluate(
                "() => { const a = Array.from(document.images);"
                " return [a.length, a.filter(i => i.complete && i.naturalWidth > 0).length]; }")
            assert n_img == sum(min(len(x), 8) for x in report.images.values()) and n_loaded == n_img
            for sid in SECTIONS:
                assert page.locator(f"section#{sid}").count() == 1, sid
            width = page.evaluate("() => document.documentElement.scrollWidth")
            assert width <= 1280, f"the page is {width} px wide"
        finally:
            browser.close()
    assert not errors, errors


def test_hardening_section(relu_cnn, digits_test):
    before = {k: v.clone() for k, v in relu_cnn.state_dict().items()}
    rep = audit(relu_cnn, data=digits_test, classes=[0, 1], per_class=1, prototypes_per_class=0, harden=True,
                progress=False)
    rounds = rep.data["hardening"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    assert all(0 <= r["lm_undesirable"] <= 1 and 0 <= r["adam_undesirable"] <= 1 for r in rounds)
    assert all(torch.equal(before[k], v) for k, v in relu_cnn.state_dict().items())  # the model is untouched
    assert 'id="hardening"' in rep.to_html() and "Adam undesirable" in rep.to_html()
