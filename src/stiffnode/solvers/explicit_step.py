"""One step of an explicit Runge-Kutta method, its stages written out.

diffrax takes a Runge-Kutta step's stages in a loop (one body for all stages, the stage
coefficients gathered by index), which keeps the program small whatever `f`. For a small
system each stage is then a handful of tiny kernels plus the loop's own bookkeeping: on
XLA:CPU a Tsit5 step of Lorenz took 0.31 us in diffrax's stage loop and 0.18 us written
out (1,000 steps in a `fori_loop`), where the fixed coefficients fold into the few fused
kernels of each stage. `AutoSwitch` takes its explicit sub-steps this way.
"""

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, PyTree


def _combination(y0, weights, ks):
    """`y0 + sum_j weights[j] ks[j]` over the nonzero weights (Python floats: weakly typed,
    folded into the kernel)."""
    out = y0
    for w, k in zip(weights, ks, strict=True):
        if w != 0:
            out = jax.tree.map(lambda o, x, w=float(w): o + w * x, out, k)
    return out


def explicit_rk_step(
    tableau: diffrax.ButcherTableau, terms, t0, t1, y0: PyTree[Array], args, f0: PyTree[Array]
) -> tuple[PyTree[Array], PyTree[Array], dict, PyTree[Array]]:
    """`k_i = f(t0 + c_i h, y0 + sum_j a_ij k_j) h`, `y1 = y0 + sum_i b_i k_i`, error
    `sum_i (b_i - b^_i) k_i`, for an explicit tableau with first stage `f0 = f(t0, y0)`.

    Returns `(y1, y_error, dense_info, f1)`: `dense_info` is diffrax's Runge-Kutta dense
    information (`y0`, `y1`, `k` stacked over the stages), for `interpolation_cls`; `f1` the
    last stage's `f`, which is `f(t1, y1)` for a first-same-as-last tableau (Tsit5, Dopri5).
    The same arithmetic as diffrax's `AbstractRungeKutta.step` for an ODE term, unrolled."""
    control = terms.contr(t0, t1)
    dt = t1 - t0
    f = f0
    ks = [terms.prod(f0, control)]
    y_stage = y0
    for c, row in zip(tableau.c, tableau.a_lower, strict=True):
        y_stage = _combination(y0, row, ks)
        f = terms.vf(t0 + float(c) * dt, y_stage, args)
        ks.append(terms.prod(f, control))
    y1 = y_stage if tableau.ssal else _combination(y0, tableau.b_sol, ks)
    zero = jax.tree.map(jnp.zeros_like, y0)
    y_error = _combination(zero, tableau.b_error, ks)
    k = jax.tree.map(lambda *x: jnp.stack(x), *ks)
    return y1, y_error, dict(y0=y0, y1=y1, k=k), f
