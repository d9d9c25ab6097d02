import numpy as np
import pytest
import torch
from scipy.optimize import least_squares

from captum_invert.solvers import batched_jacobian, levenberg_marquardt


def _rosenbrock(x, idx):
    return torch.stack([10 * (x[:, 1] - x[:, 0] ** 2), 1 - x[:, 0]], 1)


def test_agrees_with_scipy_on_rosenbrock():
    x0 = torch.tensor([[-1.2, 1.0], [2.0, -1.0], [0.5, 3.0]], dtype=torch.float64)
    res = levenberg_marquardt(_rosenbrock, x0, max_iter=200, tol=1e-12)
    assert res.done.all()
    for i in range(3):
        ref = least_squares(lambda z: _rosenbrock(torch.tensor(z)[None], None)[0].numpy(),
                            x0[i].numpy(), method="lm").x
        assert np.allclose(res.x[i].numpy(), ref, atol=1e-6)


def test_underdetermined_system_with_bounds():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 8, generator=g, dtype=torch.float64)
    xs = torch.rand(5, 8, generator=g, dtype=torch.float64)  # a solution inside [0, 1]
    b = xs @ A.T
    f = lambda x, idx: torch.tanh(x @ A.T) - torch.tanh(b[idx])  # noqa: E731
    res = levenberg_marquardt(f, torch.full((5, 8), 0.5, dtype=torch.float64), max_iter=100,
                              tol=1e-10, bounds=(0.0, 1.0))
    assert res.done.all()
    assert res.x.min() >= 0 and res.x.max() <= 1
    assert torch.allclose(res.x @ A.T, b, atol=1e-6)


def test_finished_samples_stop_costing_work():
    calls = []

    def f(x, idx):
        calls.append(len(idx))
        return x * torch.tensor([1.0, 100.0], dtype=x.dtype)[: x.shape[1]] - 1.0

    x0 = torch.tensor([[1.0, 0.01], [50.0, 3.0]], dtype=torch.float64)
    res = levenberg_marquardt(f, x0, max_iter=50, tol=1e-9)
    assert res.done.all() and res.n_iter[0] < res.n_iter[1]
    assert 1 in calls  # the batch shrank once the first sample finished


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_jacobian_modes_agree(mode):
    W = torch.randn(4, 6, dtype=torch.float64)
    f = lambda x: torch.sin(x @ W.T)  # noqa: E731
    x = torch.randn(3, 6, dtype=torch.float64)
    r, J = batched_jacobian(f, x, mode)
    expect = torch.cos(x @ W.T)[:, :, None] * W[None]
    assert torch.allclose(J, expect) and torch.allclose(r, f(x))


def test_matrix_free_solver_matches_the_explicit_one():
    from captum_invert.solvers import levenberg_marquardt_cg

    g = torch.Generator().manual_seed(1)
    A = torch.randn(40, 30, generator=g, dtype=torch.float64) / 6
    xs = torch.randn(4, 30, generator=g, dtype=torch.float64)
    b = torch.tanh(xs @ A.T)
    f = lambda x, idx: torch.tanh(x @ A.T) - b[idx]  # noqa: E731  (40 residuals, 30 unknowns)
    x0 = torch.zeros(4, 30, dtype=torch.float64)
    a = levenberg_marquardt(f, x0, max_iter=60, tol=1e-9)
    c = levenberg_marquardt_cg(f, x0, max_iter=60, tol=1e-9, cg_iters=40)
    assert a.done.all() and c.done.all()
    assert torch.allclose(c.x, xs, atol=1e-6) and torch.allclose(a.x, xs, atol=1e-6)
