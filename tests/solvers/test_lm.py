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


class _CountBackward(torch.autograd.Function):
    calls = 0

    @staticmethod
    def forward(x):
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        _CountBackward.calls += 1
        return g


def test_adjoint_update_costs_one_product_per_step():
    torch.manual_seed(0)
    m, n = 6, 40
    A, Bm = torch.randn(m, 20, dtype=torch.float64) / 4, torch.randn(20, n, dtype=torch.float64) / 6
    y = torch.randn(4, m, dtype=torch.float64)
    x0 = torch.zeros(4, n, dtype=torch.float64)

    def solve(res, update):
        _CountBackward.calls = 0
        sol = levenberg_marquardt(res, x0, max_iter=60, tol=1e-8, update=update)
        assert bool(sol.done.all()), update
        assert float(res(sol.x, torch.arange(4)).norm(dim=1).max()) <= 1e-8
        return _CountBackward.calls, int(sol.n_iter.max())

    # linear residuals: the update keeps the Jacobian exact, so every step is accepted and costs
    # one product after the first m
    lin = lambda x, idx: _CountBackward.apply(x) @ (A @ Bm).T - y[idx]  # noqa: E731
    calls, iters = solve(lin, "adjoint")
    assert calls == m + iters
    calls, iters = solve(lin, "exact")
    assert calls == m * (iters + 1)
    # nonlinear ones still converge, for fewer products in all
    nonlin = lambda x, idx: torch.tanh(_CountBackward.apply(x) @ Bm.T) @ A.T - y[idx]  # noqa: E731
    assert solve(nonlin, "adjoint")[0] < solve(nonlin, "exact")[0]
    with pytest.raises(ValueError, match="update"):
        levenberg_marquardt(lin, x0, update="broyden")


def test_averaging_is_checked_and_zero_is_the_plain_solver():
    x0 = torch.tensor([[-1.2, 1.0], [2.0, -1.0]], dtype=torch.float64)
    plain = levenberg_marquardt(_rosenbrock, x0, max_iter=200, tol=1e-12)
    zero = levenberg_marquardt(_rosenbrock, x0, max_iter=200, tol=1e-12, averaging=0.0)
    assert torch.equal(plain.x, zero.x) and torch.equal(plain.n_iter, zero.n_iter)
    avg = levenberg_marquardt(_rosenbrock, x0, max_iter=400, tol=1e-12, averaging=0.5)
    assert avg.done.all() and torch.allclose(avg.x, torch.ones_like(avg.x), atol=1e-6)
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="averaging"):
            levenberg_marquardt(_rosenbrock, x0, averaging=bad)
    with pytest.raises(ValueError, match="averaging.*exact"):
        levenberg_marquardt(_rosenbrock, x0, averaging=0.5, update="adjoint")
