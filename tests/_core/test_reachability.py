import pytest
import torch

from captum_invert import BackwardPassInversion, ForwardPassInversion, GeneralizedInversion


def _tanh_logits_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 10), torch.nn.Tanh())


@pytest.mark.parametrize("cls", [ForwardPassInversion, BackwardPassInversion, GeneralizedInversion])
def test_a_bounded_output_activation_makes_high_targets_a_clear_error_before_any_work(cls):
    # Tanh keeps the logits in [-1, 1]: p_t <= e / (e + 9 / e) = 0.4509 for every input
    model = _tanh_logits_model()
    with pytest.raises(ValueError, match=r"cannot reach `min_prob`=0.9.*Tanh.*above 0\.4509"):
        cls(model, input_shape=(8,)).attribute(target=[3, 4])
    with pytest.raises(ValueError, match="distribution is out of reach"):
        cls(model, input_shape=(8,)).attribute(target=torch.tensor([0.6] + [0.4 / 9] * 9))
    x = ForwardPassInversion(model, input_shape=(8,)).attribute(target=3, min_prob=0.15, seed=0)  # not refused
    with torch.no_grad():
        assert float(torch.softmax(model(x), 1)[0, 3]) >= 0.15
    # the bound is sound: the closest inputs a search finds when asked anyway stay under it
    x = ForwardPassInversion(model, input_shape=(8,)).attribute(target=[3] * 8, seed=0, init_std=10.0,
                                                                allow_unverified=True)
    with torch.no_grad():
        p = torch.softmax(model(x), 1)[:, 3]
    assert 0.15 < float(p.max()) <= 0.4509


def test_an_unbounded_output_activation_is_not_refused(digit_nets):
    # SELU on the logits is bounded below only: any class can reach any probability
    ForwardPassInversion(digit_nets[2]).attribute(target=[0, 9], min_prob=0.99, seed=0)
