"""A pytree of arrays carried as one flat array per dtype.

XLA:CPU runs each loop body and each branch of a conditional as a graph of kernels; when more
than 8 of them are ready at once it hands half of them to its thread pool (`ThunkExecutor`,
split threshold 8), and the hand-off between threads costs more than the kernels of a small
state. A solver state of many small arrays is such a case: diffrax selects every leaf of the
state after each step (one kernel a leaf, all ready together), and a `lax.cond` branch that
passes a state through copies it leaf by leaf. Packed, the state is one array per dtype.
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree


def _group_dtype(dtype) -> np.dtype:
    """The flat array a leaf of `dtype` travels in: booleans with int32."""
    dtype = np.dtype(dtype)
    return np.dtype(np.int32) if dtype == np.bool_ else dtype


class Packed(eqx.Module):
    """`tree`'s array leaves, flattened and concatenated into one array per dtype
    (`pack`); `unpack()` gives the tree back, leaves of the same shapes and dtypes."""

    arrays: tuple[Array, ...]
    treedef: object = eqx.field(static=True)
    # per leaf: (index into `arrays`, offset, shape, dtype)
    layout: tuple = eqx.field(static=True)

    def unpack(self) -> PyTree:
        leaves = []
        for group, offset, shape, dtype in self.layout:
            size = math.prod(shape)
            flat = jax.lax.slice_in_dim(self.arrays[group], offset, offset + size)
            leaf = flat.reshape(shape)
            leaves.append(leaf != 0 if np.dtype(dtype) == np.bool_ else leaf.astype(dtype))
        return jax.tree.unflatten(self.treedef, leaves)


def pack(tree: PyTree[Array]) -> Packed:
    """`tree` (a pytree of arrays) as a `Packed`: one flat array per dtype."""
    leaves, treedef = jax.tree.flatten(tree)
    groups: dict[np.dtype, list[Array]] = {}
    layout = []
    for leaf in leaves:
        leaf = jnp.asarray(leaf)
        key = _group_dtype(leaf.dtype)
        parts = groups.setdefault(key, [])
        offset = sum(p.size for p in parts)
        parts.append(jnp.ravel(leaf).astype(key))
        layout.append((list(groups).index(key), offset, tuple(leaf.shape), leaf.dtype.name))
    # (a group exists once a leaf is in it: never empty)
    arrays = tuple(
        jax.lax.convert_element_type(jnp.concatenate(parts), key) for key, parts in groups.items()
    )
    return Packed(arrays=arrays, treedef=treedef, layout=tuple(layout))
