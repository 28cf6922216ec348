"""Continuous normalizing flows: `log p(z(t1)) = log p(z(t0)) - int_t0^t1 tr(df/dz) dt`.

Chen et al. (2018), FFJORD (Grathwohl et al. 2019). A sample `z(0) ~ N(0, I)` of the base
density flows by `dz/dt = f(t, z)` to `x = z(T)`; the log-density is carried along as an
extra state component, `d log p(z(t)) / dt = -tr(df/dz)`. The trace is computed

- exactly (`trace="exact"`): `tr J` from the d Jacobian-vector products of `jax.linearize`,
  cost ~ d evaluations of `f`;
- by Hutchinson's estimator (`trace="hutchinson"`): `tr J = E[eps^T J eps]` for probes with
  `E[eps eps^T] = I` (Gaussian or Rademacher), one JVP; as in FFJORD the probe is drawn once
  per solve and held fixed along it, so each solve integrates an unbiased estimate of the
  trace of a fixed ODE.

A batch of samples is solved as one ODE (shared steps), each sample with its own probe.
"""

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree, Real, Scalar

from .._validation import positive_int, positive_number
from ..solve import solve
from ..training.loop import train_loop

__all__ = [
    "CNF",
    "PROBES",
    "TRACES",
    "exact_trace",
    "fit",
    "hutchinson_trace",
    "nll",
    "probe",
    "standard_normal_log_prob",
]

TRACES: tuple[str, ...] = ("exact", "hutchinson")
PROBES: tuple[str, ...] = ("gaussian", "rademacher")


def exact_trace(
    f: Callable[[Float[Array, " d"]], Float[Array, " d"]], z: Float[Array, " d"]
) -> tuple[Float[Array, " d"], Float[Array, ""]]:
    """`(f(z), tr(df/dz))`, the trace summed from the d JVPs `e_i^T J e_i` of `jax.linearize`."""
    fz, jvp = jax.linearize(f, z)
    basis = jnp.eye(z.shape[-1], dtype=z.dtype)
    return fz, jnp.sum(jnp.diagonal(jax.vmap(jvp)(basis)))


def hutchinson_trace(
    f: Callable[[Float[Array, " d"]], Float[Array, " d"]],
    z: Float[Array, " d"],
    eps: Float[Array, " d"],
) -> tuple[Float[Array, " d"], Float[Array, ""]]:
    """`(f(z), eps^T (df/dz) eps)`: one JVP; `E[eps^T J eps] = tr J` when `E[eps eps^T] = I`."""
    fz, jv = jax.jvp(f, (z,), (eps,))
    return fz, jnp.sum(eps * jv)


def probe(
    key: PRNGKeyArray, shape: tuple[int, ...], kind: str = "gaussian", dtype=None
) -> Float[Array, "..."]:
    """Hutchinson probes with `E[eps eps^T] = I`: `N(0, I)` or Rademacher (`+-1`, equally)."""
    dtype = jnp.zeros((), dtype).dtype  # JAX's default float when dtype is None
    if kind == "gaussian":
        return jax.random.normal(key, shape, dtype)
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, dtype)
    raise ValueError(f"unknown probe {kind!r}; use one of {PROBES}")


def standard_normal_log_prob(z: Float[Array, "... d"]) -> Float[Array, "..."]:
    """`log N(z; 0, I) = -(|z|^2 + d log 2 pi) / 2`, over the last axis."""
    d = z.shape[-1]
    return -0.5 * (jnp.sum(z**2, axis=-1) + d * jnp.log(2 * jnp.pi))


class _FlowField(eqx.Module):
    """`(dz/dt, d log p/dt) = (f(t, z), -tr(df/dz))` for a batch `z` of shape `(n, d)`."""

    vector_field: Callable[..., Any]
    trace: str = eqx.field(static=True)

    def __call__(self, t, state, args):
        z, _ = state
        user_args, eps = args

        def one(z_i, eps_i):
            def f(y):
                return self.vector_field(t, y, user_args)

            if self.trace == "exact":
                return exact_trace(f, z_i)
            return hutchinson_trace(f, z_i, eps_i)

        dz, tr = jax.vmap(one)(z, eps)
        return dz, -tr


def _as_batch(x):
    x = jnp.asarray(x)
    if x.ndim not in (1, 2):
        raise ValueError(f"samples must have shape (d,) or (n, d), got {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"samples must be floating point, got dtype {x.dtype}")
    return (x[None], True) if x.ndim == 1 else (x, False)


class CNF(eqx.Module):
    """The density of `x = z(T)`, `dz/dt = f(t, z, args)`, `z(0) ~ N(0, I)`:
    `log p(x) = log N(z(0); 0, I) - int_0^T tr(df/dz)(t, z(t)) dt`.

    `vector_field`: any `f(t, z, args)` on one sample `z` of shape `(d,)` (an equinox
    module to train it, e.g. `stiffnode.MLPVectorField(d, ...)`). `trace`: `"exact"` or
    `"hutchinson"`; `probe`: `"gaussian"` or `"rademacher"` (Hutchinson only).
    """

    vector_field: Callable[..., Any]
    T: float = eqx.field(static=True)
    trace: str = eqx.field(static=True)
    probe: str = eqx.field(static=True)

    def __init__(
        self,
        vector_field: Callable[..., Any],
        *,
        T: float = 1.0,
        trace: Literal["exact", "hutchinson"] = "exact",
        probe: Literal["gaussian", "rademacher"] = "gaussian",
    ):
        positive_number("horizon T", T)
        if trace not in TRACES:
            raise ValueError(f"unknown trace {trace!r}; use one of {TRACES}")
        if probe not in PROBES:
            raise ValueError(f"unknown probe {probe!r}; use one of {PROBES}")
        self.vector_field = vector_field
        self.T = float(T)
        self.trace = trace
        self.probe = probe

    def _probes(self, key, z):
        if self.trace == "exact":
            return jnp.zeros_like(z)
        if key is None:
            raise ValueError("the Hutchinson trace needs a PRNG key for its probes: key=...")
        return probe(key, z.shape, self.probe, z.dtype)

    def _flow(self, z, t0, t1, key, args, solve_options):
        eps = self._probes(key, z)
        if solve_options.get("dt0") is not None:  # a step size; its sign follows t1 - t0
            dt0 = jnp.abs(solve_options["dt0"])
            solve_options = solve_options | {"dt0": dt0 if t1 > t0 else -dt0}
        state = (z, jnp.zeros(z.shape[:1], z.dtype))
        sol = solve(
            _FlowField(self.vector_field, self.trace),
            state,
            t0,
            t1,
            args=(args, eps),
            **solve_options,
        )
        z_end, delta = sol.ys
        return z_end[-1], delta[-1], sol.stats

    def log_prob(
        self,
        x: Float[Array, "*n d"],
        *,
        key: PRNGKeyArray | None = None,
        args: PyTree[Any] = None,
        return_stats: bool = False,
        **solve_options,
    ) -> Float[Array, "*n"]:
        """`log p(x)`: solve `(z, log p)` backwards from `(x, 0)` at `T` to `t = 0`.

        `x`: one sample `(d,)` or a batch `(n, d)` (one solve, shared steps).
        A `dt0` given in `solve_options` is a step size: it is negated for this solve.
        `key`: the Hutchinson probes' key (ignored for the exact trace).
        `solve_options` go to `stiffnode.solve` (solver, rtol, atol, dt0, adjoint, ...).
        With `return_stats=True` also returns the solve's statistics.
        """
        z, single = _as_batch(x)
        z0, delta, stats = self._flow(z, self.T, 0.0, key, args, solve_options)
        # delta = -int_T^0 tr dt = +int_0^T tr dt.
        out = standard_normal_log_prob(z0) - delta
        out = out[0] if single else out
        return (out, stats) if return_stats else out

    def sample(
        self,
        key: PRNGKeyArray,
        n: int,
        *,
        dim: int | None = None,
        args: PyTree[Any] = None,
        dtype=None,
        **solve_options,
    ) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
        """`n` samples `x = z(T)` from `z(0) ~ N(0, I)`, with their log-densities `log p(x)`.

        `dim`: the dimension d; by default read off an `MLPVectorField` (`mlp.out_size`)
        or a field's `size` attribute. `key` also draws the Hutchinson probes.
        """
        n = positive_int("n", n)
        d = _field_dim(self.vector_field) if dim is None else positive_int("dim", dim)
        k_base, k_probe = jax.random.split(key)
        z0 = jax.random.normal(k_base, (n, d), jnp.zeros((), dtype).dtype)
        x, delta, _ = self._flow(z0, 0.0, self.T, k_probe, args, solve_options)
        # delta = -int_0^T tr dt.
        return x, standard_normal_log_prob(z0) + delta


def _field_dim(vector_field) -> int:
    mlp = getattr(vector_field, "mlp", None)
    if mlp is not None:
        return int(mlp.out_size)
    size = getattr(vector_field, "size", None)
    if isinstance(size, int):
        return size
    raise ValueError("cannot tell the flow's dimension from its vector field; pass dim=d")


def nll(
    cnf: CNF, x: Float[Array, "n d"], key: PRNGKeyArray | None = None, **solve_options
) -> Scalar:
    """The negative log-likelihood `-mean_i log p(x_i)` (in nats per sample)."""
    return -jnp.mean(cnf.log_prob(x, key=key, **solve_options))


@eqx.filter_jit
def _step(params, static, opt_state, optimizer, x, key, solve_options):
    def loss(p):
        return nll(eqx.combine(p, static), x, key, **dict(solve_options))

    value, grads = jax.value_and_grad(loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value


def fit(
    cnf: CNF,
    data: Float[Array, "N d"] | Callable[[PRNGKeyArray, int], Float[Array, "n d"]],
    *,
    steps: int,
    batch_size: int,
    key: PRNGKeyArray,
    optimizer: optax.GradientTransformation | None = None,
    progress: bool = False,
    **solve_options,
) -> tuple[CNF, Real[np.ndarray, " steps"]]:
    """Maximum likelihood: minimise `nll` with optax over `steps` minibatches.

    Args:
        cnf: the flow; its floating-point array leaves are trained.
        data: a training set `(N, d)` (minibatches drawn with replacement) or a sampler
            `data(key, n)` (e.g. `stiffnode.toy_densities.two_moons`), fresh each step.
        steps, batch_size: optimizer steps and samples per step.
        key: PRNG key for minibatches and Hutchinson probes.
        optimizer: an optax transformation; default `optax.adam(1e-3)`.
        progress: show a tqdm bar.
        solve_options: go to `stiffnode.solve` (solver, rtol, atol, dt0, adjoint, ...).

    Returns:
        The trained flow and the per-step minibatch NLL.

    Raises:
        TrainingDiverged: a step's NLL is NaN/inf or 1e6 times the first (`training.loop`).
    """
    steps = positive_int("steps", steps)
    batch_size = positive_int("batch_size", batch_size)
    if optimizer is None:
        optimizer = optax.adam(1e-3)
    if callable(data):
        sampler = data
    else:
        data = jnp.asarray(data)
        if data.ndim != 2:
            raise ValueError(f"data must have shape (N, d), got {data.shape}")

        def sampler(k, n):
            return data[jax.random.randint(k, (n,), 0, data.shape[0])]

    params, static = eqx.partition(cnf, eqx.is_inexact_array)
    frozen = tuple(sorted(solve_options.items()))

    def advance(state):
        params, opt_state, key = state
        key, k_data, k_probe = jax.random.split(key, 3)
        x = sampler(k_data, batch_size)
        params, opt_state, value = _step(params, static, opt_state, optimizer, x, k_probe, frozen)
        return (params, opt_state, key), {"nll": value}

    result = train_loop(
        advance,
        (params, optimizer.init(params), key),
        steps,
        start_loss=None,  # the first minibatch's NLL, before its update
        loss_key="nll",
        progress=progress,
        description="cnf",
        unit="step",
    )
    return eqx.combine(result.state[0], static), result.history["nll"]

