"""`solvers.packed`: a pytree packed into one flat array per dtype and unpacked again is the
same pytree (shapes, dtypes, values), under jit, and gradients flow through it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stiffnode.solvers import AutoSwitch
from stiffnode.solvers.packed import pack


def _tree(real, cplx):
    return {
        "counts": jnp.array([3, -7, 2**30], jnp.int32),
        "flag": jnp.array(True),
        "flags": jnp.array([[True, False], [False, True]]),
        "t": jnp.asarray(0.25, real),
        "empty": jnp.zeros((0, 3), real),
        "matrix": jnp.arange(6, dtype=real).reshape(2, 3) / 7,
        "z": jnp.array([1 + 2j, -0.5j], cplx),
        "nested": (jnp.asarray(-1.5, real), [jnp.array([4, 5], jnp.int32)]),
    }


@pytest.mark.parametrize("dtype", ["float32", pytest.param("float64", marks=pytest.mark.x64)])
def test_pack_then_unpack_is_the_tree(dtype):
    real = jnp.dtype(dtype)
    cplx = jnp.complex64 if dtype == "float32" else jnp.complex128
    tree = _tree(real, cplx)
    packed = jax.jit(pack)(tree)
    # one array per dtype: int32 (booleans travel with it), the real dtype, the complex one
    assert sorted(str(a.dtype) for a in packed.arrays) == sorted(
        ["int32", str(real), str(jnp.dtype(cplx))]
    )
    out = jax.jit(lambda p: p.unpack())(packed)
    assert jax.tree.structure(out) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(tree), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # exact: no arithmetic


def test_gradients_flow_through_pack():
    tree = _tree(jnp.float32, jnp.complex64)

    def loss(x):
        t = dict(tree, matrix=tree["matrix"] * x, t=x)
        out = pack(t).unpack()
        return jnp.sum(out["matrix"] ** 2) + 3 * out["t"]

    x = jnp.asarray(1.3, jnp.float32)
    expected = 2 * x * jnp.sum(tree["matrix"] ** 2) + 3
    np.testing.assert_allclose(jax.grad(loss)(x), expected, rtol=1e-6)


def test_auto_switch_state_unpacks_to_its_fields():
    """The packed state `AutoSwitch` hands diffrax unpacks to an `AutoSwitchState` whose
    stiff state unpacks to the stiff method's own state structure."""
    import diffrax

    solver = AutoSwitch()
    terms = diffrax.ODETerm(lambda t, y, args: -y)
    y0 = jnp.ones(3)
    state = solver.init(terms, 0.0, 1.0, y0, None).unpack()
    assert state.stiff_mode.dtype == jnp.bool_ and state.num_switches.dtype == jnp.int32
    assert state.next_substep == 1.0 and state.time_stiff == 0.0
    stiff = solver.stiff.init(terms, 0.0, 1.0, y0, None)
    assert jax.tree.structure(state.stiff_state.unpack()) == jax.tree.structure(stiff)
