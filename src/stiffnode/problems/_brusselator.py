"""The 2-D Brusselator reaction-diffusion system on a periodic n x n grid (2 n^2 states)."""

import functools

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ._base import StiffProblem

FORCING_TIME = 1.1
"""The forcing switches on at `t = 1.1` (a discontinuity in `t`)."""


@functools.lru_cache(maxsize=8)
def _grid(n: int):
    """Grid `linspace(0, 1, n)` (`x` along axis 0), spacing `1/(n-1)`, and the forcing disc."""
    xs = np.linspace(0.0, 1.0, n)
    x, y = np.meshgrid(xs, xs, indexing="ij")
    disc = ((x - 0.3) ** 2 + (y - 0.6) ** 2 <= 0.1**2).astype(np.float64)
    disc.setflags(write=False)
    return x, y, disc


def _laplacian_jnp(w):
    return jnp.roll(w, 1, 0) + jnp.roll(w, -1, 0) + jnp.roll(w, 1, 1) + jnp.roll(w, -1, 1) - 4.0 * w


class BrusselatorField(eqx.Module):
    """`u' = a + u^2 v - (b + 1) u + alpha/dx^2 L u + 5 [t >= 1.1] disc`,
    `v' = b u - u^2 v + alpha/dx^2 L v`; `L` the periodic 5-point Laplacian, `y = (u, v)`
    flattened row-major (`u[i, j]` at `x_i, y_j`), `args = (a, b, alpha)`."""

    n: int = eqx.field(static=True)
    forcing: bool = eqx.field(static=True)

    def __call__(self, t, y, args):
        n = self.n
        a, b, alpha = args[0], args[1], args[2]
        u, v = y[: n * n].reshape(n, n), y[n * n :].reshape(n, n)
        diffusion = alpha * (n - 1) ** 2
        uuv = u * u * v
        du = a + uuv - (b + 1.0) * u + diffusion * _laplacian_jnp(u)
        if self.forcing:
            du = du + jnp.where(t >= FORCING_TIME, 5.0, 0.0) * _grid(n)[2]
        dv = b * u - uuv + diffusion * _laplacian_jnp(v)
        return jnp.concatenate([du.ravel(), dv.ravel()])


def _laplacian_np(w):
    return np.roll(w, 1, 0) + np.roll(w, -1, 0) + np.roll(w, 1, 1) + np.roll(w, -1, 1) - 4.0 * w


def numpy_rhs(t, y, args, *, n: int, forcing: bool):
    """`BrusselatorField` in numpy."""
    a, b, alpha = args
    u, v = y[: n * n].reshape(n, n), y[n * n :].reshape(n, n)
    diffusion = alpha * (n - 1) ** 2
    uuv = u * u * v
    du = a + uuv - (b + 1.0) * u + diffusion * _laplacian_np(u)
    if forcing and t >= FORCING_TIME:
        du = du + 5.0 * _grid(n)[2]
    dv = b * u - uuv + diffusion * _laplacian_np(v)
    return np.concatenate([du.ravel(), dv.ravel()])


@functools.lru_cache(maxsize=8)
def _jacobian_pattern(n: int):
    """Rows and columns of the `12 n^2` structural nonzeros, in the order `numpy_jac` fills."""
    cells = np.arange(n * n).reshape(n, n)
    neighbours = [np.roll(cells, s, ax).ravel() for s, ax in ((1, 0), (-1, 0), (1, 1), (-1, 1))]
    flat, m = cells.ravel(), n * n
    rows = [flat] * 5 + [flat, flat + m] + [flat + m] * 5
    cols = [flat, *neighbours, flat + m, flat] + [flat + m] + [c + m for c in neighbours]
    return np.concatenate(rows), np.concatenate(cols)


def numpy_jac(t, y, args, *, n: int, forcing: bool):
    """`df/dy` as scipy.sparse CSR with a fixed pattern (`12 n^2` entries, zeros kept):
    `[[D L + diag(2uv - b - 1), diag(u^2)], [diag(b - 2uv), D L - diag(u^2)]]`,
    `D = alpha/dx^2`."""
    import scipy.sparse as sp

    a, b, alpha = args
    m = n * n
    u, v = y[:m], y[m:]
    diffusion = alpha * (n - 1) ** 2
    side = np.full(m, diffusion)
    data = np.concatenate(
        [
            2.0 * u * v - (b + 1.0) - 4.0 * diffusion,
            side, side, side, side,
            u * u,
            b - 2.0 * u * v,
            -u * u - 4.0 * diffusion,
            side, side, side, side,
        ]
    )  # fmt: skip
    rows, cols = _jacobian_pattern(n)
    return sp.csr_matrix((data, (rows, cols)), shape=(2 * m, 2 * m))


def brusselator_2d(
    n: int = 32,
    *,
    a: float = 1.0,
    b: float = 3.4,
    alpha: float = 10.0,
    t1: float = 11.5,
    forcing: bool = True,
) -> StiffProblem:
    """The 2-D Brusselator of the DifferentialEquations.jl stiff-PDE tutorial and SciMLBenchmarks
    ("Brusselator 2D"; after Hairer & Wanner II, IV.10, BRUSS-2D), on `[0, 11.5]`.

    `u(0) = 22 (y(1 - y))^1.5`, `v(0) = 27 (x(1 - x))^1.5` on the grid `linspace(0, 1, n)`
    with `dx = 1/(n-1)` and periodic neighbours (as in that benchmark: the nodes `0` and `1`
    are distinct and adjacent, so the period is `n dx`). Forcing 5 on the disc of radius 0.1
    about `(0.3, 0.6)` from `t = 1.1` (`forcing=False` drops it; it is a jump in `t`).
    `args = (a, b, alpha)`; stiffness ~ `8 alpha (n-1)^2` (7.7e4 for n = 32).
    Tolerances `rtol = 1e-6`, `atol = 1e-9`: the tightest pair of SciMLBenchmarks' work-precision
    sweep. `jac_numpy` gives scipy.sparse CSR. No published reference.
    """
    n = int(n)
    if n < 3:
        raise ValueError(f"n must be at least 3, got {n}")
    x, y, _ = _grid(n)
    u0 = 22.0 * (y * (1.0 - y)) ** 1.5
    v0 = 27.0 * (x * (1.0 - x)) ** 1.5
    return StiffProblem(
        name="brusselator_2d",
        vector_field=BrusselatorField(n=n, forcing=bool(forcing)),
        y0=np.concatenate([u0.ravel(), v0.ravel()]),
        t0=0.0,
        t1=float(t1),
        args=np.array([a, b, alpha], dtype=np.float64),
        rtol=1e-6,
        atol=1e-9,
        reference=None,
        numpy_rhs=functools.partial(numpy_rhs, n=n, forcing=bool(forcing)),
        numpy_jac=functools.partial(numpy_jac, n=n, forcing=bool(forcing)),
    )
