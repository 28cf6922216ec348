"""Robertson's chemical kinetics (ROBER): three species, rate constants spanning 11 decades."""

import jax.numpy as jnp
import numpy as np

from ._base import StiffProblem

RATES = np.array([0.04, 3.0e7, 1.0e4])
"""`(k1, k2, k3)`, Robertson (1966)."""

REFERENCE_1E11 = np.array([0.2083340149701255e-7, 0.8333360770334713e-13, 0.9999999791665050])
"""The state at `t = 1e11`, IVPtestset (Mazzia & Magherini), problem ROBER."""


def vector_field(t, y, args):
    """`y1' = -k1 y1 + k3 y2 y3`, `y2' = k1 y1 - k2 y2^2 - k3 y2 y3`, `y3' = k2 y2^2`."""
    k1, k2, k3 = args[0], args[1], args[2]
    fast = k2 * y[1] * y[1]
    back = k3 * y[1] * y[2]
    slow = k1 * y[0]
    return jnp.stack([-slow + back, slow - fast - back, fast])


def numpy_rhs(t, y, k):
    """`vector_field` in numpy."""
    r1, r2, r3 = k[0] * y[0], k[1] * y[1] ** 2, k[2] * y[1] * y[2]
    return np.array([-r1 + r3, r1 - r2 - r3, r2])


def numpy_jac(t, y, k):
    """`df/dy` of `vector_field`, dense."""
    k1, k2, k3 = k
    return np.array(
        [
            [-k1, k3 * y[2], k3 * y[1]],
            [k1, -2.0 * k2 * y[1] - k3 * y[2], -k3 * y[1]],
            [0.0, 2.0 * k2 * y[1], 0.0],
        ]
    )


def robertson(
    t1: float = 1e5, *, k1: float = 0.04, k2: float = 3.0e7, k3: float = 1.0e4
) -> StiffProblem:
    """Robertson (1966), `y0 = (1, 0, 0)`; `args = (k1, k2, k3)`, `y1 + y2 + y3 = 1` throughout.

    Tolerances `rtol = 1e-10`, `atol = 1e-14` (deTestSet's `rober`, from the IVPtestset
    drivers): `y2` peaks at 3.6e-5 and falls to 8e-14 by `t = 1e11`, so `atol` must stay far
    below it; with a looser `atol` `y2` goes negative and the solution blows up (the classic
    Robertson failure at long times). SUNDIALS' `cvRoberts_dns` uses `rtol = 1e-4` with
    `atol = (1e-8, 1e-14, 1e-6)`. `reference`: published only for `t1 = 1e11` (IVPtestset).
    """
    args = np.array([k1, k2, k3], dtype=np.float64)
    published = float(t1) == 1e11 and np.array_equal(args, RATES)
    return StiffProblem(
        name="robertson",
        vector_field=vector_field,
        y0=np.array([1.0, 0.0, 0.0]),
        t0=0.0,
        t1=float(t1),
        args=args,
        rtol=1e-10,
        atol=1e-14,
        reference=REFERENCE_1E11.copy() if published else None,
        numpy_rhs=numpy_rhs,
        numpy_jac=numpy_jac,
    )
