"""HIRES: high irradiance responses of photomorphogenesis (Schäfer 1975), 8 states."""

import jax.numpy as jnp
import numpy as np

from ._base import StiffProblem

T1 = 321.8122

REFERENCE = np.array(
    [
        0.7371312573325668e-3,
        0.1442485726316185e-3,
        0.5888729740967575e-4,
        0.1175651343283149e-2,
        0.2386356198831331e-2,
        0.6238968252742796e-2,
        0.2849998395185769e-2,
        0.2850001604814231e-2,
    ]
)
"""The state at `t = 321.8122`, IVPtestset (Mazzia & Magherini), problem HIRES."""


def vector_field(t, y, args):
    """Linear except `280 y6 y8`; `y7 + y8` is conserved. See IVPtestset's HIRES."""
    y1, y2, y3, y4, y5, y6, y7, y8 = (y[i] for i in range(8))
    bind = 280.0 * y6 * y8
    return jnp.stack(
        [
            -1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007,
            1.71 * y1 - 8.75 * y2,
            -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
            8.32 * y2 + 1.71 * y3 - 1.12 * y4,
            -1.745 * y5 + 0.43 * y6 + 0.43 * y7,
            -bind + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7,
            bind - 1.81 * y7,
            -bind + 1.81 * y7,
        ]
    )


# The linear part A y + c, row by row as in the equations above.
_A = np.zeros((8, 8))
_A[0, [0, 1, 2]] = [-1.71, 0.43, 8.32]
_A[1, [0, 1]] = [1.71, -8.75]
_A[2, [2, 3, 4]] = [-10.03, 0.43, 0.035]
_A[3, [1, 2, 3]] = [8.32, 1.71, -1.12]
_A[4, [4, 5, 6]] = [-1.745, 0.43, 0.43]
_A[5, [3, 4, 5, 6]] = [0.69, 1.71, -0.43, 0.69]
_A[6, 6] = -1.81
_A[7, 6] = 1.81
_C = np.zeros(8)
_C[0] = 0.0007
_BIND = np.array([0, 0, 0, 0, 0, -1.0, 1.0, -1.0])


def numpy_rhs(t, y, args):
    """`A y + c + 280 y6 y8 (0, 0, 0, 0, 0, -1, 1, -1)`."""
    return _A @ y + _C + 280.0 * y[5] * y[7] * _BIND


def numpy_jac(t, y, args):
    """`A + 280 (0, .., -1, 1, -1)^T (y8 e6 + y6 e8)^T`, dense."""
    jac = _A.copy()
    jac[:, 5] += 280.0 * y[7] * _BIND
    jac[:, 7] += 280.0 * y[5] * _BIND
    return jac


def hires() -> StiffProblem:
    """HIRES (Schäfer 1975; Hairer & Wanner II, IV.10), `y0 = (1, 0, 0, 0, 0, 0, 0, 0.0057)` on
    `[0, 321.8122]`, no parameters. Tolerances `rtol = atol = 1e-6` (deTestSet's `hires`)."""
    return StiffProblem(
        name="hires",
        vector_field=vector_field,
        y0=np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0057]),
        t0=0.0,
        t1=T1,
        args=None,
        rtol=1e-6,
        atol=1e-6,
        reference=REFERENCE.copy(),
        numpy_rhs=numpy_rhs,
        numpy_jac=numpy_jac,
    )
