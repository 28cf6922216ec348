"""E5 (stiff DETEST, Enright, Hull & Lindberg 1975): chemical pyrolysis, badly scaled."""

import jax.numpy as jnp
import numpy as np

from ._base import StiffProblem

REFERENCE = np.array([0.1152903278711829e-290, 0.8867655517642120e-22, 0.8854814626268838e-22, 0.0])
"""The state at `t = 1e13`, IVPtestset (Mazzia & Magherini), problem E5. Good to ~1e-3 only
in `y2`, `y3`: `y2 - y3 - y4` is conserved (= 0) and `y4 -> 0`, yet these `y2 - y3 = 1.28e-25`,
the drift any float64 solver accumulates while the states are ~1e-10 (Radau at rtol 1e-12:
7e-26). `y1` is 0 to double precision (it decays at least like `exp(-A t)`, `exp(-7890)`).
"""

_A, _B, _C, _M = 7.89e-10, 1.1e7, 1.13e3, 1.0e6


def vector_field(t, y, args):
    """`y1' = -A y1 - B y1 y3`, `y2' = A y1 - MC y2 y3`, `y4' = B y1 y3 - C y4`,
    `y3' = y2' - y4'`; `A = 7.89e-10`, `B = 1.1e7`, `C = 1.13e3`, `M = 1e6`."""
    y1, y2, y3, y4 = y[0], y[1], y[2], y[3]
    p1, p2, p3, p4 = _A * y1, _B * y1 * y3, _M * _C * y2 * y3, _C * y4
    f2, f4 = p1 - p3, p2 - p4
    # y3' as f2 - f4 exactly, so that y2 - y3 - y4 stays conserved to rounding: written as
    # p1 - p2 - p3 + p4, its error (~1e-24 per step) exceeds E5's atol and spoils the run.
    return jnp.stack([-p1 - p2, f2, f2 - f4, f4])


def numpy_rhs(t, y, args):
    """`vector_field` in numpy."""
    y1, y2, y3, y4 = y
    f2 = _A * y1 - _M * _C * y2 * y3
    f4 = _B * y1 * y3 - _C * y4
    return np.array([-_A * y1 - _B * y1 * y3, f2, f2 - f4, f4])


def numpy_jac(t, y, args):
    """`df/dy` of `vector_field`, dense."""
    y1, y2, y3, _ = y
    mc = _M * _C
    return np.array(
        [
            [-_A - _B * y3, 0.0, -_B * y1, 0.0],
            [_A, -mc * y3, -mc * y2, 0.0],
            [_A - _B * y3, -mc * y3, -_B * y1 - mc * y2, _C],
            [_B * y3, 0.0, _B * y1, -_C],
        ]
    )


def e5() -> StiffProblem:
    """E5 (Hairer & Wanner II, IV.10), `y0 = (1.76e-3, 0, 0, 0)` on `[0, 1e13]`, no parameters.

    Very badly scaled: `y1 ~ 1e-3` decays to 1e-290 while `y2, y3, y4` never exceed ~1.5e-10
    and end near 1e-22, so `atol` must be tiny: `rtol = 1e-6`, `atol = 1.11e-24` (deTestSet's
    `E5`, from the IVPtestset; 1e-20 is also common, but then `y2, y3` are below `atol` for
    most of the run). `y2 - y3 - y4` is conserved (= 0). Negative `y` make it blow up.
    """
    return StiffProblem(
        name="e5",
        vector_field=vector_field,
        y0=np.array([1.76e-3, 0.0, 0.0, 0.0]),
        t0=0.0,
        t1=1e13,
        args=None,
        rtol=1e-6,
        atol=1.11e-24,
        reference=REFERENCE.copy(),
        numpy_rhs=numpy_rhs,
        numpy_jac=numpy_jac,
    )
