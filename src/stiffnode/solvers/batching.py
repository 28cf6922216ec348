"""A conditional that stays lazy under `vmap`.

Under `jax.vmap`, `lax.cond` with a batched predicate becomes a `select`: both branches run
for every lane, every time. For a solver's expensive, rarely needed work (a new Jacobian,
an LU factorisation, a Newton retry) that means paying it on every step of a vmapped solve,
which is exactly where Jacobian reuse should pay. `lazy_cond` instead reduces the batched
predicate over the lanes: when no lane needs the expensive branch it is skipped; when some
do, it runs (batched) and each lane takes its own branch's result.
"""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import custom_batching


def _select(pred, on_true, on_false):
    def one(a, b):
        return jnp.where(jnp.reshape(pred, pred.shape + (1,) * (a.ndim - pred.ndim)), a, b)

    return jax.tree.map(one, on_true, on_false)


def lazy_cond(
    pred, true_fun: Callable, false_fun: Callable, *operands: Any, per_lane: bool = False
):
    """`lax.cond(pred, true_fun, false_fun, *operands)`; under `vmap` with a batched `pred`,
    `true_fun` runs only when `any(pred)` (for all lanes, then selected lane by lane) and
    `false_fun` always, so `false_fun` should be the cheap branch.

    `per_lane=True`: under `vmap`, `true_fun` runs unbatched, one lane after another, for
    only the lanes whose `pred` holds. For work that does not vectorise across lanes anyway
    (LAPACK factorises one matrix after another): it then costs the lanes that need it, not
    all of them.

    Both branches must return the same structure, as for `lax.cond`. Everything that may
    be batched must be passed in `operands` (pytrees; their non-array leaves, e.g. a vector
    field's function, are passed through): the branches may close over unbatched values
    only (values an outer `jax.grad`/`jax.jvp` differentiates are fine: they are made
    operands). No gradient flows through: the operands are taken under `stop_gradient` (it is
    for work whose results carry none, such as Jacobians, factorisations and Newton
    iterations whose solution gets its gradient elsewhere).
    """
    dynamic, static = eqx.partition(operands, eqx.is_array)
    dynamic = jax.lax.stop_gradient(dynamic)
    # Values the branches close over that an outer autodiff transformation perturbs (e.g.
    # parameters a vector field closes over) become operands too, without gradient:
    # `custom_vmap` cannot close over them.
    branches = []
    for branch in (true_fun, false_fun):
        closed, consts = jax.closure_convert(
            lambda dyn, b=branch: b(*eqx.combine(dyn, static)), dynamic
        )
        branches.append((closed, jax.lax.stop_gradient(consts)))
    dynamic = (dynamic, [consts for _, consts in branches])

    def call(which):
        closed = branches[which][0]
        return lambda dyn: closed(dyn[0], *dyn[1][which])

    @custom_batching.custom_vmap
    def cond(pred, operands):
        return jax.lax.cond(pred, call(0), call(1), operands)

    @cond.def_vmap
    def rule(axis_size, in_batched, pred, operands):
        pred_batched, operands_batched = in_batched

        def full(x, batched):
            return x if batched else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))

        operands = jax.tree.map(full, operands, operands_batched)
        on_true = jax.vmap(call(0))
        on_false = jax.vmap(call(1))
        if not pred_batched:
            out = jax.lax.cond(pred, on_true, on_false, operands)
        else:

            def some(ops):
                return _select(pred, on_true(ops), on_false(ops))

            def each(ops):
                out = on_false(ops)
                count = jnp.sum(pred.astype(jnp.int32))
                (lanes,) = jnp.nonzero(pred, size=axis_size, fill_value=0)

                def body(j, out):
                    i = lanes[j]
                    new = call(0)(jax.tree.map(lambda x: x[i], ops))
                    return jax.tree.map(lambda o, v: o.at[i].set(v), out, new)

                return jax.lax.fori_loop(0, count, body, out)

            out = jax.lax.cond(jnp.any(pred), each if per_lane else some, on_false, operands)
        return out, jax.tree.map(lambda _: True, out)

    return cond(pred, dynamic)
