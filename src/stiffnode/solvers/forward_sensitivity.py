"""Forward sensitivities that also serve reverse mode: the derivative of a solve by one
vmapped forward-mode pass over every differentiated input, exposed to JAX as a Jacobian
product (SciMLSensitivity's `ForwardDiffSensitivity`, usable under `jax.grad`)."""

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import PyTree

AUTO_MAX_DIRECTIONS = 100
"""`adjoint="auto"` uses forward sensitivities up to this many differentiable real numbers
(states and parameters: SciMLSensitivity's rule of thumb), `"recursive"` beyond."""


class ForwardSensitivity(diffrax.ForwardMode):
    """Gradients of a solve by forward sensitivities, for `jax.grad`/`jax.vjp` as well as
    `jax.jvp`/`jax.jacfwd`.

    The solve runs once with the derivatives of its saved states `ys` with respect to every
    real number `p_k` of its differentiated inputs (`y0`, `args`, the vector field's arrays;
    a complex number counts twice) carried along: `jax.jvp` through the solver, vmapped
    over the `P` directions, gives the Jacobian `J = dys/dp`. JAX then sees the solve's
    derivative as the product with `J`: `dys = J dp` forward, `p_bar = J^T ys_bar` in
    reverse. It is the derivative of the discrete solve, as `RecursiveCheckpointAdjoint`'s
    (the step sizes' own dependence on `p` aside, which neither follows), costs about
    `1 + c P` forward solves with no checkpoints (memory `P` times the solver's state,
    flat in `max_steps`), and pays where `P` is small: see `AUTO_MAX_DIRECTIONS`. (A
    `jax.jvp` along one direction also pays for all `P`: for a few directions among many
    inputs, `adjoint="forward"`.)

    With `stiffnode.solve(adjoint="sensitivity")`; in `diffrax.diffeqsolve` directly it is
    `diffrax.ForwardMode` (forward mode only): wrap the call in `forward_sensitivities`.
    Only `ys` carry derivatives (not `ts` or the statistics); `t0`, `t1` and the first step
    are not differentiated.
    """


def real_size(x) -> int:
    """Real numbers in the array `x` (a complex number counts twice)."""
    return x.size * (2 if jnp.iscomplexobj(x) else 1)


def _directions(leaves: list) -> tuple[int, list]:
    """The number `P` of real directions over `leaves` and, per leaf, `(offset, complex)`."""
    offsets, total = [], 0
    for x in leaves:
        offsets.append((total, jnp.iscomplexobj(x)))
        total += real_size(x)
    return total, offsets


def _basis(leaves: list, total: int, offsets: list) -> list:
    """Per leaf, its tangents in all `total` directions: shape `(total, *leaf.shape)`."""
    rows = jnp.arange(total, dtype=jnp.int32)[:, None]
    basis = []
    for x, (offset, is_complex) in zip(leaves, offsets, strict=True):
        entries = offset + jnp.arange(x.size, dtype=jnp.int32)[None, :]
        unit = (rows == entries).astype(x.dtype)
        if is_complex:
            unit = unit + 1j * (rows == entries + x.size).astype(x.dtype)
        basis.append(unit.reshape((total, *x.shape)))
    return basis


def _coordinates(tangent, offset_complex) -> list:
    """The tangent's real coordinates in `_basis`' directions (flat, real)."""
    _, is_complex = offset_complex
    flat = jnp.ravel(tangent)
    return [jnp.real(flat), jnp.imag(flat)] if is_complex else [flat]


def forward_sensitivities(
    fn: Callable[[PyTree], PyTree],
    differentiated: Callable[[PyTree], PyTree] = lambda out: out,
) -> Callable[[PyTree], PyTree]:
    """`fn(inputs)` whose derivative JAX takes as a product with the Jacobian of
    `differentiated(fn(inputs))` with respect to the differentiated inputs, computed by one
    vmapped `jax.jvp` (see `ForwardSensitivity`); the rest of the output has zero
    derivative. Arrays `fn` closes over are differentiated as inputs (closure-converted)."""

    @eqx.filter_custom_jvp
    def wrapped(closed_inputs):
        closed, inputs = closed_inputs
        return closed(inputs)

    @wrapped.def_jvp
    def wrapped_jvp(primals, tangents):
        (inputs,), (t_inputs,) = primals, tangents
        t_leaves, t_def = jtu.tree_flatten(t_inputs, is_leaf=lambda x: x is None)
        x_leaves = t_def.flatten_up_to(inputs)
        moving = [i for i, t in enumerate(t_leaves) if t is not None]
        p = [jnp.asarray(x_leaves[i]) for i in moving]
        if not p:  # (nothing differentiated)
            out = wrapped(inputs)
            return out, jtu.tree_map(lambda _: None, out)

        def run(p_):
            xs = list(x_leaves)
            for i, v in zip(moving, p_, strict=True):
                xs[i] = v
            closed, inputs_ = jtu.tree_unflatten(t_def, xs)
            return closed(inputs_)

        total, offsets = _directions(p)

        def push(direction):
            out, t_out = jax.jvp(run, (p,), (direction,))
            return out, differentiated(t_out)

        out, jacobian = jax.vmap(push, out_axes=(None, 0))(_basis(p, total, offsets))
        coordinates = [
            c
            for i, offset in zip(moving, offsets, strict=True)
            for c in _coordinates(t_leaves[i], offset)
        ]
        sizes = [c.size for c in coordinates]

        def product(j):
            """`J dp` for one output leaf, `j` of shape `(P, ...)`: per block of
            directions, so that inputs of different dtypes never meet."""
            result, start = jnp.zeros(j.shape[1:], j.dtype), 0
            for c, size in zip(coordinates, sizes, strict=True):
                block = j[start : start + size]
                result = result + jnp.tensordot(c.astype(j.dtype), block, axes=1)
                start += size
            return result

        t_selected = jtu.tree_map(product, jacobian)
        t_out = jtu.tree_map(lambda _: None, out)
        t_out = _replace_selected(t_out, differentiated, t_selected)
        return out, t_out

    def call(inputs):
        return wrapped((eqx.filter_closure_convert(fn, inputs), inputs))

    return call


def _replace_selected(tree, differentiated, values):
    """`tree` (all leaves None) with the part `differentiated` picks set to `values`."""
    return eqx.tree_at(differentiated, tree, values, is_leaf=lambda x: x is None)
