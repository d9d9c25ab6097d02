import torch
from torch import nn

from captum_invert.blocks.linear import linear_inverse


def _layer(m, n, cond=1e4, seed=0):
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, m, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    k = min(m, n)
    s = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), k, dtype=torch.float64)
    W = U[:, :k] @ torch.diag(s) @ V[:, :k].T
    layer = nn.Linear(n, m)
    with torch.no_grad():
        layer.weight.copy_(W)
    return layer


def test_condition_cap_holds():
    layer = _layer(20, 50, cond=1e4)
    for cap in (10.0, 100.0, 1000.0):
        inv = linear_inverse(layer, cap)
        kept = inv.singular_values[: inv.rank]
        assert float(kept[0] / kept[-1]) <= cap
        assert inv.cond <= cap
        assert inv.rank < 20  # the cap did drop directions
        assert inv.null.shape == (50, 50 - inv.rank)


def test_null_space_samples_solve_the_system():
    layer = _layer(16, 40, cond=5.0)
    inv = linear_inverse(layer, 100.0)
    assert inv.full_row_rank
    t = torch.randn(8, 16, dtype=torch.float64)
    x0 = inv.solve(t)
    xs = x0 + torch.randn(8, inv.null.shape[1], dtype=torch.float64) @ inv.null.T * 3.0
    W, b = layer.weight.double(), layer.bias.double()
    assert torch.allclose(x0 @ W.T + b, t, atol=1e-8)
    assert torch.allclose(xs @ W.T + b, t, atol=1e-8)
    assert (xs - x0).norm() > 1.0  # the samples really differ
    # x0 is the minimum-norm solution: orthogonal to the null space
    assert (x0 @ inv.null).abs().max() < 1e-8


def test_cache_is_invalidated_by_in_place_updates():
    layer = nn.Linear(6, 3)
    a = linear_inverse(layer, 100.0)
    assert linear_inverse(layer, 100.0) is a
    with torch.no_grad():
        layer.weight.mul_(2.0)
    b = linear_inverse(layer, 100.0)
    assert b is not a
    assert torch.allclose(b.weight, 2 * a.weight)
