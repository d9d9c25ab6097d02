"""Each prior changes what it claims to change, and inversions with priors still verify."""
import pytest
import torch
from torch import nn

from captum_invert import ActivationMaximization, ForwardPassInversion, GeneralizedInversion
from captum_invert.blocks.plan import model_mode_guard
from captum_invert.metrics import judge_accuracy
from captum_invert.models.cnn import NO_DIGIT
from captum_invert.priors import (
    TV, BNStats, DataPrior, FourierParam, Jitter, L2, PCAParam, PixelParam, Prior, RandomFlip, RandomRotate,
    RandomScale, auto_prior, bn_statistics_gap, shape_inputs)

SHAPE = (1, 28, 28)
BOX = (0.0, 1.0)


def _shape(model, prior, labels, steps=60, seed=0):
    with model_mode_guard(model):
        x, _ = shape_inputs(model, lambda o: o.log_softmax(1), prior, SHAPE, BOX, torch.Generator().manual_seed(seed),
                            labels=torch.as_tensor(labels), n=len(labels), steps=steps)
    return x


def test_fixed_magnitude_fourier_keeps_its_spectrum(digit_nets):
    mag = torch.rand(1, 28, 15, dtype=torch.float64) + 0.1
    param = FourierParam(magnitude=mag)
    param.setup(SHAPE, None)
    z = param.init(4, torch.Generator().manual_seed(0), torch.float64)
    spec = torch.fft.rfft2(param.raw(z), norm="ortho").abs()
    # the self-conjugate columns (0 and 14) lose their imaginary part in irfft2; the rest is exact
    assert torch.allclose(spec[..., 1:14], mag[None, ..., 1:14].expand_as(spec[..., 1:14]), rtol=1e-9)
    # and stays so after optimisation: only the phase moves
    prior = Prior(FourierParam(magnitude=mag))
    x = _shape(digit_nets[2], prior, [3, 5])
    z = param.from_image(x.double())
    assert torch.allclose(torch.fft.rfft2(param.raw(z), norm="ortho").abs()[..., 1:14],
                          mag[None, ..., 1:14].expand(2, -1, -1, -1), rtol=1e-9)
    free = Prior(FourierParam())
    xf = _shape(digit_nets[2], free, [3, 5])
    assert xf.shape == (2, *SHAPE) and xf.min() >= 0 and xf.max() <= 1


def test_free_fourier_and_pca_round_trip_and_stay_in_the_box(digits):
    ref = digits[0].tensors[0][:300]
    for param in (FourierParam(), PCAParam(ref, 0.9), PixelParam()):
        param.setup(SHAPE, BOX)
        z = param.init(3, torch.Generator().manual_seed(1))
        x = param.image(z)
        assert x.shape == (3, *SHAPE) and x.min() >= 0 and x.max() <= 1
    pca = PCAParam(ref, 0.9)
    pca.setup(SHAPE, None)
    z = pca.init(5, torch.Generator().manual_seed(2), torch.float64)
    assert torch.allclose(pca.from_image(pca.image(z)), z, atol=1e-8)
    # images of the PCA parameterization lie in the references' principal subspace
    x = pca.image(z).reshape(5, -1) - pca.mean
    resid = x - (x @ pca.basis.T) @ pca.basis
    assert resid.norm() < 1e-8 * x.norm()
    ff = FourierParam()
    ff.setup(SHAPE, BOX)
    img = torch.rand(2, *SHAPE) * 0.9 + 0.05
    assert torch.allclose(ff.image(ff.from_image(img)), img, atol=1e-4)


def test_bn_statistics_prior_moves_batch_statistics_toward_the_running_ones(digit_cnn):
    labels = list(range(10)) * 2
    base = Prior(FourierParam())
    gap0 = bn_statistics_gap(digit_cnn, _shape(digit_cnn, base, labels, steps=80))
    gap1 = bn_statistics_gap(digit_cnn, _shape(digit_cnn, base + BNStats(3.0), labels, steps=80))
    assert gap1 < 0.5 * gap0
    # the hooks are gone afterwards
    assert all(not m._forward_pre_hooks for m in digit_cnn.modules())


def test_transforms():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, *SHAPE)
    assert torch.allclose(Jitter(0)(x, g), x, atol=1e-5)
    assert torch.allclose(RandomScale((1.0, 1.0))(x, g), x, atol=1e-5)
    assert torch.allclose(RandomRotate(0)(x, g), x, atol=1e-5)
    assert torch.equal(RandomFlip(1.0)(x, g), x.flip(-1))
    assert not torch.allclose(RandomRotate(30)(x, g), x, atol=1e-2)
    assert (Jitter(3)(x, g) - x).abs().max() > 0.1
    with pytest.raises(ValueError, match="image inputs"):
        Jitter(2)(torch.rand(3, 10), g)


def test_tv_and_l2_penalties_do_what_they_say(digit_nets):
    labels = [1, 7]
    x0 = _shape(digit_nets[2], Prior(PixelParam()), labels)
    x1 = _shape(digit_nets[2], Prior(PixelParam()) + TV(5.0), labels)
    tv = lambda x: TV(1.0)(x, None).mean()  # noqa: E731
    assert tv(x1) < 0.7 * tv(x0)
    x2 = _shape(digit_nets[2], Prior(PixelParam()) + L2(5.0), labels)
    assert x2.pow(2).mean() < x0.pow(2).mean()


def test_composition_and_bad_priors(digit_nets, digit_cnn):
    p = FourierParam() + Jitter(2) + TV(0.1)
    assert isinstance(p, Prior) and len(p.transforms) == 1 and len(p.penalties) == 1
    with pytest.raises(ValueError, match="one parameterization"):
        FourierParam() + PixelParam()
    for bad in (lambda: TV(-1.0), lambda: BNStats(float("nan")), lambda: L2("1")):
        with pytest.raises(ValueError, match="`weight`"):
            bad()
    with pytest.raises(ValueError, match="`magnitude`"):
        FourierParam(magnitude="flat")
    with pytest.raises(ValueError, match="`steps`"):
        Prior(steps=0)
    inv = ForwardPassInversion(digit_nets[2])
    with pytest.raises(ValueError, match="`prior`"):
        inv.attribute(target=1, prior="lucid")
    with pytest.raises(ValueError, match="`prior`"):
        inv.attribute(target=1, prior=3)
    with pytest.raises(ValueError, match="`l2` and `tv`"):
        ActivationMaximization(digit_nets[2]).attribute(target=1, prior="auto", tv=0.1)
    with pytest.raises(ValueError, match="FourierParam needs image inputs"):
        ForwardPassInversion(nn.Sequential(nn.Linear(20, 3)), input_shape=(20,)).attribute(
            target=1, prior=FourierParam())
    assert any(isinstance(q, BNStats) for q in auto_prior(digit_cnn, SHAPE).penalties)
    assert not any(isinstance(q, BNStats) for q in auto_prior(digit_nets[2], SHAPE).penalties)


@pytest.mark.parametrize("prior", ["auto", "data"])
def test_inversion_with_a_prior_verifies_in_the_box(digit_cnn, digits, prior):
    model = digit_cnn
    pr = DataPrior(digits[0].tensors[0][:500]) if prior == "data" else "auto"
    labels = list(range(10))
    x, delta = ForwardPassInversion(model).attribute(target=labels, input_range=BOX, prior=pr, seed=0,
                                                     return_convergence_delta=True)
    with torch.no_grad():
        p = model(x).softmax(1)[torch.arange(10), labels]
    assert (p >= 0.9).all() and x.min() >= 0 and x.max() <= 1
    assert torch.allclose(delta, 1 - p.double(), atol=1e-5)


def test_distribution_target_with_a_prior(digit_nets, digits):
    model = digit_nets[2]
    t = torch.tensor([0.5, 0.5] + [0.0] * 8)
    # (inside the box this net cannot reach 50/50 within atol, with or without a prior)
    x = ForwardPassInversion(model).attribute(target=t, n_samples=4, seed=0,
                                              prior=DataPrior(digits[0].tensors[0][:500]))
    with torch.no_grad():
        p = model(x).softmax(1)
    assert ((p - t).abs().amax(1) <= 0.02).all()


def test_generalized_and_activation_maximization_take_priors(small_vit, digit_cnn, digits):
    ref = digits[0].tensors[0][:500]
    prior = DataPrior(ref)
    x = GeneralizedInversion(small_vit).attribute(target=[2, 4, 7], input_range=BOX, prior=prior, seed=0)
    with torch.no_grad():
        assert (small_vit(x).softmax(1)[torch.arange(3), [2, 4, 7]] >= 0.9).all()
    was = [m.training for m in digit_cnn.modules()]
    digit_cnn.train()
    x = ActivationMaximization(digit_cnn).attribute(target=[0, 3], input_range=BOX, prior="auto", seed=0)
    with torch.no_grad():
        digit_cnn.eval()
        assert (digit_cnn(x).softmax(1)[torch.arange(2), [0, 3]] >= 0.9).all()
    for m, w in zip(digit_cnn.modules(), was):
        m.training = w


def test_data_prior_makes_inversions_readable_to_an_independent_judge(digit_cnn, digits, digit_judge):
    model = digit_cnn
    labels = torch.arange(10).repeat_interleave(3)
    inv = ForwardPassInversion(model)
    base = inv.attribute(target=labels.tolist(), input_range=BOX, seed=0)
    prior = DataPrior(digits[0].tensors[0])
    shaped = inv.attribute(target=labels.tolist(), input_range=BOX, seed=0, prior=prior)
    r0 = judge_accuracy(digit_judge, base, labels, NO_DIGIT)
    r1 = judge_accuracy(digit_judge, shaped, labels, NO_DIGIT)
    assert r0["read"] <= 0.2 and r1["read"] >= r0["read"] + 0.5


def test_diversity_penalty_spreads_the_samples_of_a_target(digit_cnn, digits):
    from captum_invert.metrics import class_diversity
    from captum_invert.priors import Diversity

    ref = digits[0].tensors[0]
    labels = [3] * 6 + [7] * 6
    x0 = _shape(digit_cnn, DataPrior(ref, diversity=0.0), labels, steps=80)
    x1 = _shape(digit_cnn, DataPrior(ref, diversity=3.0), labels, steps=80)
    assert class_diversity(x1, labels) > 1.1 * class_diversity(x0, labels)
    # samples of different targets do not interact: one sample per target gives no penalty
    d = Diversity(1.0)
    d.groups = torch.tensor([0, 1, 2])
    assert torch.equal(d(torch.rand(3, *SHAPE), None), torch.zeros(3))


def test_histogram_matching_gives_the_references_pixel_values(digits, digit_cnn):
    ref = digits[0].tensors[0][:400]
    pca = PCAParam(ref, 0.9, match_histogram=True)
    pca.setup(SHAPE, BOX)
    x = pca.image(pca.init(3, torch.Generator().manual_seed(0)))
    # rank for rank, the pooled reference quantiles: same sorted values in every image
    srt = x.reshape(3, -1).sort(1)[0]
    assert torch.allclose(srt, pca.profile.float()[None].expand(3, -1))
    assert abs(float((x == 0).float().mean()) - float((ref == 0).float().mean())) < 0.02
    x = ForwardPassInversion(digit_cnn).attribute(target=[1, 8], input_range=BOX, seed=0,
                                                 prior=DataPrior(ref, match_histogram=True))
    with torch.no_grad():
        assert (digit_cnn(x).softmax(1)[torch.arange(2), [1, 8]] >= 0.9).all()
