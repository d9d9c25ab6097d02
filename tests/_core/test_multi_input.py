"""Multi-input models: ``input_shape`` a tuple of shapes, tuple ``inputs`` and tuple results,
inverted jointly (Captum's tuple-input convention)."""
import pytest
import torch
from torch import nn

from captum_invert import ActivationMaximization, ForwardPassInversion, GeneralizedInversion, InversionError


class ImageAndMeta(nn.Module):
    """An image and a metadata vector, fused after separate encoders; an optional scale arg."""

    def __init__(self):
        super().__init__()
        self.img = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ELU(), nn.Flatten(), nn.Linear(4 * 36, 16))
        self.meta = nn.Sequential(nn.Linear(5, 16), nn.ELU())
        self.head = nn.Sequential(nn.ELU(), nn.Linear(32, 4))

    def forward(self, image, meta, scale=1.0):
        return scale * self.head(torch.cat([self.img(image), self.meta(meta)], 1))


SHAPES = ((1, 6, 6), (5,))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    m = ImageAndMeta().eval()
    with torch.no_grad():  # random weights, logits wide enough that every class is reachable in [0, 1]
        m.head[1].weight.mul_(20)
    return m


@pytest.mark.parametrize("method", [ForwardPassInversion, GeneralizedInversion])
def test_tuple_shapes_give_tuple_results_that_verify(net, method):
    inv = method(net, input_shape=SHAPES)
    img, meta = inv.attribute(target=2, n_samples=6, seed=0, input_range=(0, 1))
    assert img.shape == (6, 1, 6, 6) and meta.shape == (6, 5)
    assert float(img.min()) >= 0 and float(meta.max()) <= 1
    with torch.no_grad():
        assert bool((net(img, meta).softmax(1)[:, 2] >= 0.9).all())
    # both parts move: the joint solve is not one input held fixed
    assert float(img.std(0).mean()) > 0 and float(meta.std(0).mean()) > 0


def test_tuple_inputs_start_points_and_extra_args(net):
    torch.manual_seed(1)
    start = (torch.rand(3, 1, 6, 6), torch.rand(3, 5))
    inv = ForwardPassInversion(net, input_shape=SHAPES)
    (img, meta), d = inv.attribute(inputs=start, target=[0, 1, 3], additional_forward_args=(2.0,),
                                   return_convergence_delta=True)
    with torch.no_grad():
        p = net(img, meta, 2.0).softmax(1)
    assert bool((p[torch.arange(3), torch.tensor([0, 1, 3])] >= 0.9).all())
    assert torch.allclose(d, 1 - p[torch.arange(3), torch.tensor([0, 1, 3])].double(), atol=1e-5)


def test_activation_maximization_on_tuple_inputs(net):
    img, meta = ActivationMaximization(net, input_shape=SHAPES).attribute(target=1, n_samples=2, seed=0)
    with torch.no_grad():
        assert bool((net(img, meta).softmax(1)[:, 1] >= 0.9).all())


def test_failures_come_back_as_tuples(net):
    inv = ForwardPassInversion(net, input_shape=SHAPES)
    with pytest.raises(InversionError) as e:
        inv.attribute(target=0, n_samples=2, seed=0, max_iter=1, max_retries=0, min_prob=0.999999,
                      input_range=(0, 0.01))
    assert isinstance(e.value.result, tuple) and e.value.result[1].shape == (2, 5)


def test_bad_tuple_inputs_are_refused(net):
    inv = ForwardPassInversion(net, input_shape=SHAPES)
    with pytest.raises(ValueError, match="tuple of 2 tensors"):
        inv.attribute(inputs=torch.rand(2, 41), target=0)
    with pytest.raises(ValueError, match="tuple of 2 tensors"):
        inv.attribute(inputs=(torch.rand(2, 1, 6, 6), torch.rand(3, 5)), target=0)
    with pytest.raises(ValueError, match="input_shape"):
        ForwardPassInversion(net, input_shape=((1, 6, 6), 5))
    with pytest.raises(ValueError, match="input_shape"):
        ForwardPassInversion(net, input_shape=((1, 6, 6), (0,)))


def test_three_inputs_of_mixed_dtypes_join():
    from captum_invert import ModelAdapter

    shapes = ((2,), (1, 2), (3,))
    adapter = ModelAdapter(lambda a, b, c: a, shapes)
    parts = (torch.ones(4, 2, dtype=torch.float16), torch.zeros(4, 1, 2), torch.full((4, 3), 2.0, dtype=torch.float64))
    flat = adapter.flat(parts)
    assert flat.shape == (4, 7) and flat.dtype == torch.float64 and adapter.input_shape == (7,)
    back = adapter.unflat(flat)
    assert [tuple(b.shape) for b in back] == [(4, 2), (4, 1, 2), (4, 3)] and float(back[2][0, 0]) == 2.0
