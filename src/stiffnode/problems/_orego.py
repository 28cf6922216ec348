"""OREGO: the Oregonator (Field & Noyes 1974), Belousov-Zhabotinskii kinetics, 3 states."""

import jax.numpy as jnp
import numpy as np

from ._base import StiffProblem

REFERENCE = np.array([0.1000814870318523e1, 0.1228178521549917e4, 0.1320554942846706e3])
"""The state at `t = 360`, IVPtestset (Mazzia & Magherini), problem OREGO."""

_S, _Q, _W = 77.27, 8.375e-6, 0.161


def vector_field(t, y, args):
    """`y1' = s (y2 + y1 (1 - q y1 - y2))`, `y2' = (y3 - (1 + y1) y2) / s`, `y3' = w (y1 - y3)`,
    with `s = 77.27`, `q = 8.375e-6`, `w = 0.161`."""
    y1, y2, y3 = y[0], y[1], y[2]
    return jnp.stack(
        [_S * (y2 + y1 * (1.0 - _Q * y1 - y2)), (y3 - (1.0 + y1) * y2) / _S, _W * (y1 - y3)]
    )


def numpy_rhs(t, y, args):
    """`vector_field` in numpy."""
    y1, y2, y3 = y
    return np.array(
        [_S * (y2 + y1 - _Q * y1**2 - y1 * y2), (y3 - y2 - y1 * y2) / _S, _W * (y1 - y3)]
    )


def numpy_jac(t, y, args):
    """`df/dy` of `vector_field`, dense."""
    y1, y2, _ = y
    return np.array(
        [
            [_S * (1.0 - 2.0 * _Q * y1 - y2), _S * (1.0 - y1), 0.0],
            [-y2 / _S, -(1.0 + y1) / _S, 1.0 / _S],
            [_W, 0.0, -_W],
        ]
    )


def orego() -> StiffProblem:
    """The Oregonator (Hairer & Wanner II, IV.10), `y0 = (1, 2, 3)` on `[0, 360]`, no
    parameters; the states swing over 5 decades. Tolerances `rtol = atol = 1e-6` (deTestSet's
    `orego`)."""
    return StiffProblem(
        name="orego",
        vector_field=vector_field,
        y0=np.array([1.0, 2.0, 3.0]),
        t0=0.0,
        t1=360.0,
        args=None,
        rtol=1e-6,
        atol=1e-6,
        reference=REFERENCE.copy(),
        numpy_rhs=numpy_rhs,
        numpy_jac=numpy_jac,
    )
