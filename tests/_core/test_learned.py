import pytest
import torch

from captum_invert import LearnedInversion
from captum_invert import features as F
from captum_invert.metrics import normalized_reconstruction_error


@pytest.fixture(scope="module")
def fitted(digits, digit_nets):
    return LearnedInversion(digit_nets[6], "4").fit(digits[0], epochs=6, progress=False)


def test_decoder_beats_the_mean_image_on_held_out_images(digits, fitted):
    xt = digits[1].tensors[0]
    rec, err = fitted.attribute(xt, return_convergence_delta=True)
    assert rec.shape == xt.shape
    mean_err = normalized_reconstruction_error(xt, digits[0].tensors[0].mean(0, keepdim=True).expand_as(xt))
    assert normalized_reconstruction_error(xt, rec) < 0.8 * mean_err
    assert torch.allclose(err, (rec - xt).flatten(1).norm(dim=1).double(), atol=1e-4)
    assert fitted.history[-1] < fitted.history[0]


def test_perturbations_keep_their_promises():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(5, 40, generator=g)
    b = F.binarize(f)
    assert torch.allclose(b.norm(dim=1), f.norm(dim=1)) and torch.equal(torch.sign(b), torch.sign(f))
    assert b.abs().unique().numel() == 5  # one magnitude per sample
    d = F.dropout(f, 0.5, g)
    assert torch.allclose(d.norm(dim=1), f.norm(dim=1), atol=1e-5)
    assert abs(float((d == 0).float().mean()) - 0.5) < 0.15
    s = F.drop_smallest(f, 0.5)
    assert int((s == 0).sum(1)[0]) == 20 and s.abs().max() == f.abs().max()
    assert torch.equal(F.keep_top_k(f, 3).ne(0).sum(1), torch.full((5,), 3))
    assert torch.equal(F.zero_top_k(f, 3).ne(0).sum(1), torch.full((5,), 37))
    line = F.interpolate(f[0], f[1], 5)
    assert torch.allclose(line[0], f[0]) and torch.allclose(line[-1], f[1])
    r = F.sample_from_histograms(f, 7, alpha=2.0, gen=g)
    for j in range(40):  # every value comes from that dimension's bank, scaled by alpha
        assert all(bool((f[:, j] * 2.0 - v).abs().min() < 1e-6) for v in r[:, j])


def test_non_differentiable_features_train_and_reconstruct(digits):
    pytest.importorskip("skimage")
    tr = torch.utils.data.TensorDataset(*(t[:600] for t in digits[0].tensors))
    li = LearnedInversion(feature_fn=F.hog_features, input_shape=(1, 28, 28)).fit(tr, epochs=5, progress=False)
    xt = digits[1].tensors[0][:100]
    rec = li.attribute(xt)
    assert normalized_reconstruction_error(xt, rec) < normalized_reconstruction_error(
        xt, tr.tensors[0].mean(0, keepdim=True).expand_as(xt))
    assert F.lbp_features(xt[:2]).shape == (2, 160)
    codes = F.binarized(lambda x: x.flatten(1) - 0.5)(xt[:3])
    assert set(codes.unique().tolist()) <= {0.0, 1.0}


def test_save_load_round_trip(tmp_path, digits, digit_nets, fitted):
    p = tmp_path / "dec.pt"
    fitted.save(p)
    other = LearnedInversion(digit_nets[6], "4").load(p)
    xt = digits[1].tensors[0][:10]
    assert torch.allclose(other.attribute(xt), fitted.attribute(xt))


def test_bad_inputs(digit_nets, fitted):
    fresh = LearnedInversion(digit_nets[6], "4")
    with pytest.raises(ValueError, match="not trained"):
        fresh.decode(torch.zeros(2, 256))
    with pytest.raises(ValueError, match="256 values"):
        fitted.decode(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="exactly one"):
        LearnedInversion()
    with pytest.raises(ValueError, match="no module named"):
        LearnedInversion(digit_nets[6], "nope")
    with pytest.raises(ValueError, match="`inputs`"):
        fitted.attribute(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="nothing to save"):
        fresh.save("x.pt")


def test_reconstruct_cli(tmp_path):
    from captum_invert.cli import main
    import json

    out = tmp_path / "r"
    assert main(["reconstruct", "--out", str(out), "--epochs", "1", "--n-test", "40", "--n-opt", "2", "--n-latency", "1", "--no-autoencoder",
                 "--opt-iter", "3", "--no-handcrafted", "--no-progress"]) == 0
    rows = json.loads((out / "reconstruct.json").read_text())["rows"]
    assert [r["features"].split(" (")[0] for r in rows][-1] == "fcnn6 logits"
    assert (out / "reconstruct.png").stat().st_size > 20_000


def test_autoencoder_upper_bound_is_at_least_as_good_as_the_frozen_decoder(digits, digit_nets):
    from captum_invert._core.learned import autoencoder_upper_bound

    tr = torch.utils.data.TensorDataset(*(t[:600] for t in digits[0].tensors))
    xt = digits[1].tensors[0][:200]
    model = digit_nets[6]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    frozen = LearnedInversion(model, "10").fit(tr, epochs=4, progress=False)
    err_frozen = normalized_reconstruction_error(xt, frozen.attribute(xt))
    err_ae = autoencoder_upper_bound(model, "10", tr, xt, epochs=4)
    assert err_ae < err_frozen
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("out_ch,stride,pad", [(1, 2, 1), (1, 3, 0), (2, 2, 1)])
def test_up_convolution_kernel_matches_conv_transpose_in_value_and_gradient(out_ch, stride, pad):
    from captum_invert._core.learned import _UpConv

    torch.manual_seed(0)
    ref = torch.nn.ConvTranspose2d(5, out_ch, 4, stride, pad)
    ours = _UpConv(5, out_ch, 4, stride, pad)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5, 7, 6, requires_grad=True)
    y_ref, y = ref(x), ours(x)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    (gx_ref, gw_ref), (gx, gw) = (torch.autograd.grad((m(x) * g).sum(), (x, m.weight)) for m in (ref, ours))
    torch.testing.assert_close(gx, gx_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gw, gw_ref, atol=1e-4, rtol=1e-4)
