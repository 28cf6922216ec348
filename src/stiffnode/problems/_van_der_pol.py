"""The van der Pol oscillator in relaxation form (MATLAB's `vdp1000`)."""

import jax.numpy as jnp
import numpy as np

from ._base import StiffProblem

REFERENCE_T2000 = np.array([0.1706167732170469e1, -0.8928097010248125e-3])
"""The state at `t = 2000` for `mu = 1000`: IVPtestset's VDPOL (scaled form, `eps = 1/mu^2`,
`t = 2`) mapped back to this form (its `y2` divided by `mu`), as deTestSet stores it."""


def vector_field(t, y, args):
    """`y1' = y2`, `y2' = mu (1 - y1^2) y2 - y1`, `args = mu`."""
    mu = args
    return jnp.stack([y[1], mu * (1.0 - y[0] ** 2) * y[1] - y[0]])


def numpy_rhs(t, y, mu):
    """`vector_field` in numpy."""
    return np.array([y[1], mu * (1.0 - y[0] ** 2) * y[1] - y[0]])


def numpy_jac(t, y, mu):
    """`df/dy` of `vector_field`, dense."""
    return np.array([[0.0, 1.0], [-2.0 * mu * y[0] * y[1] - 1.0, mu * (1.0 - y[0] ** 2)]])


def van_der_pol(mu: float = 1e3, t1: float = 3000.0) -> StiffProblem:
    """Van der Pol, `y0 = (2, 0)`, `args = mu` (a 0-d array); `mu = 1e3` on `[0, 3000]` is
    MATLAB's `vdp1000` (about 1.5 periods, period ~ (3 - 2 ln 2) mu).

    Tolerances `rtol = atol = 1e-6` (deTestSet's `vdpol`). `reference`: published only for
    `mu = 1e3`, `t1 = 2000` (IVPtestset VDPOL, rescaled).
    """
    published = float(mu) == 1e3 and float(t1) == 2000.0
    return StiffProblem(
        name="van_der_pol",
        vector_field=vector_field,
        y0=np.array([2.0, 0.0]),
        t0=0.0,
        t1=float(t1),
        args=np.asarray(mu, dtype=np.float64),
        rtol=1e-6,
        atol=1e-6,
        reference=REFERENCE_T2000.copy() if published else None,
        numpy_rhs=numpy_rhs,
        numpy_jac=numpy_jac,
    )
