import copy

import pytest
import torch

from captum_invert import ForwardPassInversion, GeneralizedInversion


@pytest.fixture(scope="module")
def compiled(digit_nets, tmp_path_factory):
    """The 2-layer digits net saved as TorchScript and as a torch.export program, loaded back."""
    net = copy.deepcopy(digit_nets[2]).eval()
    d = tmp_path_factory.mktemp("compiled")
    torch.jit.save(torch.jit.script(net), d / "m.ts")
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(net, (torch.zeros(2, 1, 28, 28),), dynamic_shapes=({0: batch},)),
                      d / "m.pt2")
    torch.export.save(torch.export.export(net, (torch.zeros(2, 1, 28, 28),)), d / "static.pt2")
    return net, {"torchscript": torch.jit.load(d / "m.ts"), "pt2": torch.export.load(d / "m.pt2").module(),
                 "static": torch.export.load(d / "static.pt2").module()}


@pytest.mark.parametrize("kind", ["torchscript", "pt2"])
@pytest.mark.parametrize("cls", [ForwardPassInversion, GeneralizedInversion])
def test_torchscript_and_exported_models_invert(compiled, kind, cls):
    net, models = compiled
    m = models[kind]
    targets = [0, 4, 8]
    x = cls(m, input_shape=(1, 28, 28)).attribute(target=targets, seed=0, input_range=(0.0, 1.0))
    with torch.no_grad():  # the original eager net agrees: the samples verify on it too
        p = torch.softmax(net(x), 1)[torch.arange(3), targets]
    assert bool((p >= 0.9).all())


@pytest.mark.parametrize("n", [1, 5])
def test_an_export_with_a_fixed_batch_runs_in_chunks(compiled, n):
    net, models = compiled
    m = models["static"]  # exported with batch 2, no dynamic dimension
    inv = ForwardPassInversion(m)  # the shape comes from the exported program
    assert inv.input_shape == (1, 28, 28) and inv.adapter.fixed_batch == 2
    targets = list(range(n))
    x = inv.attribute(target=targets, seed=0, input_range=(0.0, 1.0))
    assert len(x) == n
    with torch.no_grad():
        p = torch.softmax(net(x), 1)[torch.arange(n), targets]
    assert bool((p >= 0.9).all())
