"""Stiff neural ODEs for chemical kinetics: learn `dy/dt` of a stiff reaction network from
its trajectory (Kim, Ji, Deng, Ma & Rackauckas, "Stiff neural ordinary differential
equations", Chaos 31, 093122, 2021).

What makes such training work, after Kim et al.: a stiff solver in the loop; each
species' output scaled by its own magnitude over the time window, `dy_i/dt =
NN(y)_i * scale_i / t_end` (species spanning ten decades would otherwise leave the small
ones unseen by the loss and by the network's output layer); the loss on scaled states,
`mean |y_hat_i - y_i| / scale_i`; save times log-spaced where the dynamics are (Robertson's
span 1e-5 to 1e5); and a bound on the gradient's norm. A universal ODE adds known terms:
`dy/dt = known(t, y) + NN(y) * scale / t_end`.

`kinetics_data("robertson" | "pollu")` gives Kim et al.'s two data sets from a tight scipy
Radau solve; `ScaledField` the model; `fit_kinetics` trains it with any optax optimizer
(resumable, progress bar, `TrainingDiverged` on a diverging run).
"""

import os
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, Scalar

from .._validation import positive_int
from ..problems import jac_numpy, pollu, rhs_numpy, robertson
from ..solve import solve
from ..training.loop import train_loop

__all__ = [
    "KineticsData",
    "KineticsFit",
    "ScaledField",
    "fit_kinetics",
    "kim_optimizer",
    "kinetics_data",
    "kinetics_model",
    "predict",
    "scaled_mae",
]

EXPERIMENTS: dict[str, dict[str, Any]] = {
    # Kim et al.'s code (DENG-MIT/StiffNeuralODE): ROBER.jl and POLLU.jl.
    "robertson": dict(num_points=50, log_times=True, width=5, depth=6, grad_norm=None),
    "pollu": dict(num_points=20, log_times=False, width=10, depth=3, grad_norm=100.0),
}
"""Per problem: save points, log- or linearly spaced, the MLP's width and hidden layers,
and the gradient's norm (every gradient rescaled to it; `None`: left alone)."""


class KineticsData(NamedTuple):
    """A trajectory observed at `k` times: `ts (k,)` increasing, positive; states `ys (k, d)`;
    `y0 (d,)` at `t = 0`; `scale (d,)` each species' magnitude over `ts`; `t_end`."""

    ts: Float[Array, " k"]
    ys: Float[Array, "k d"]
    y0: Float[Array, " d"]
    scale: Float[Array, " d"]
    t_end: float


def kinetics_data(
    problem: Literal["robertson", "pollu"] = "robertson",
    num_points: int | None = None,
    rtol: float = 1e-10,
) -> KineticsData:
    """Kim et al.'s data: Robertson (k = 0.04, 3e7, 1e4; y0 = (1, 0, 0)) at 50 log-spaced
    times from 1e-5 to 1e5, `scale = max_t y`; or POLLU (20 species) at 20 equally spaced
    times in (0, 60], `scale = max_t y - min_t y`. The states come from scipy's Radau at
    `rtol` (absolute tolerance `rtol * 1e-4`), with the analytic Jacobian: a reference
    independent of stiffnode's solvers. Float64 numpy in, arrays of JAX's default float."""
    from scipy.integrate import solve_ivp

    if problem not in EXPERIMENTS:
        raise ValueError(f"unknown problem {problem!r}; use one of {sorted(EXPERIMENTS)}")
    setting = EXPERIMENTS[problem]
    k = positive_int("num_points", setting["num_points"] if num_points is None else num_points)
    stiff = robertson() if problem == "robertson" else pollu()
    t_end = float(stiff.t1)
    if setting["log_times"]:
        ts = np.logspace(-5, np.log10(t_end), k)
    else:
        ts = np.linspace(0.0, t_end, k + 1)[1:]  # t = 0 is y0 itself
    sol = solve_ivp(rhs_numpy(stiff), (0.0, t_end), stiff.y0, method="Radau", t_eval=ts,
                    rtol=rtol, atol=rtol * 1e-4, jac=jac_numpy(stiff))  # fmt: skip
    if not sol.success:
        raise RuntimeError(f"the reference solve failed: {sol.message}")
    ys = sol.y.T
    if problem == "robertson":
        scale = np.max(ys, axis=0)
    else:
        scale = np.max(ys, axis=0) - np.min(ys, axis=0)
    # A species that never changes is scaled by its own size (or 1 if it is zero).
    scale = np.where(scale > 0, scale, np.where(np.abs(stiff.y0) > 0, np.abs(stiff.y0), 1.0))
    dtype = jnp.zeros(()).dtype
    as_array = lambda a: jnp.asarray(a, dtype)  # noqa: E731
    return KineticsData(as_array(ts), as_array(ys), as_array(stiff.y0), as_array(scale), t_end)


class ScaledField(eqx.Module):
    """`dy/dt = known(t, y, args) + net(y) * scale / t_end`: a network's output per species
    scaled by the species' magnitude and the time window (Kim et al.); with `known`, a
    universal ODE. `scale_inputs=True` feeds `y / scale` to the network (Kim et al. feed `y`)."""

    net: Callable[[Float[Array, " d"]], Float[Array, " d"]]
    # Constants, not parameters: static, so that no optimizer (weight decay included) and
    # no `eqx.partition(field, eqx.is_inexact_array)` sees them.
    scale: tuple[float, ...] = eqx.field(static=True, converter=lambda a: tuple(
        float(x) for x in np.ravel(a)))  # fmt: skip
    t_end: float = eqx.field(static=True)
    known: Callable[[Any, Float[Array, " d"], Any], Float[Array, " d"]] | None = None
    scale_inputs: bool = eqx.field(static=True, default=False)

    def __call__(self, t, y, args=None):
        scale = jnp.asarray(self.scale, jnp.result_type(y))
        out = self.net(y / scale if self.scale_inputs else y) * scale / self.t_end
        return out if self.known is None else out + self.known(t, y, args)


def kinetics_model(
    data: KineticsData,
    *,
    key: PRNGKeyArray,
    width: int,
    depth: int,
    known: Callable[[Any, Array, Any], Array] | None = None,
    scale_inputs: bool = False,
    init: Literal["glorot", "equinox"] = "glorot",
) -> ScaledField:
    """`ScaledField` with a GELU MLP of `depth` hidden layers of `width` (Kim et al.:
    Robertson 6 x 5, POLLU 3 x 10), in the data's dtype.

    `init="glorot"`: weights uniform in `+-sqrt(6 / (fan_in + fan_out))`, biases zero (Flux's
    `Dense`, which Kim et al. used); `"equinox"`: `eqx.nn.Linear`'s, weights and biases
    uniform in `+-1/sqrt(fan_in)`. It decides Robertson: `y2` (peak 3.6e-5) needs the
    network to output ~1e8 at `t = 0` (`k1 y1 t_end / scale_2`), which training from the
    zero-bias start reaches (Kim et al.'s loss 5e-3 at epoch ~39,000) and from equinox's
    random biases does not (0.13 after 20,000 epochs, `y2` unlearned before `t ~ 1`)."""
    if init not in ("glorot", "equinox"):
        raise ValueError(f"init must be 'glorot' or 'equinox', got {init!r}")
    d = data.y0.shape[0]
    net_key, init_key = jax.random.split(key)
    net = eqx.nn.MLP(d, d, positive_int("width", width), positive_int("depth", depth),
                     jax.nn.gelu, key=net_key, dtype=data.y0.dtype)  # fmt: skip
    if init == "glorot":
        layers = [
            eqx.tree_at(lambda lin: (lin.weight, lin.bias), lin,
                        (_glorot_uniform(k, lin.weight.shape, lin.weight.dtype),
                         jnp.zeros_like(lin.bias)))  # fmt: skip
            for lin, k in zip(net.layers, jax.random.split(init_key, len(net.layers)), strict=True)
        ]
        net = eqx.tree_at(lambda m: m.layers, net, tuple(layers))
    return ScaledField(net, data.scale, data.t_end, known, scale_inputs)


def _glorot_uniform(key: PRNGKeyArray, shape: tuple[int, int], dtype) -> Array:
    """Uniform in `+-sqrt(6 / (fan_in + fan_out))` (Glorot & Bengio 2010)."""
    limit = np.sqrt(6.0 / sum(shape))
    return jax.random.uniform(key, shape, dtype, -limit, limit)


_DEFAULT_SOLVE = dict(solver="rodas5p", rtol=1e-5, atol=1e-9, max_steps=4096, adjoint="auto")


def predict(field: Callable[..., Any], data: KineticsData, **solve_options) -> Float[Array, "k d"]:
    """`y_hat(t_j)`: the solve of `dy/dt = field(t, y)` from `data.y0` at `t = 0`, saved at
    `data.ts` (defaults: Rodas5P, rtol 1e-5, atol 1e-9, at most 4,096 steps, the adjoint
    for gradients `"auto"`; any keyword of `stiffnode.solve` overrides them)."""
    options = _DEFAULT_SOLVE | solve_options
    sol = solve(field, data.y0, 0.0, data.t_end, saveat=diffrax.SaveAt(ts=data.ts), **options)
    return sol.ys


def scaled_mae(field: Callable[..., Any], data: KineticsData, **solve_options) -> Scalar:
    """`mean_jk |y_hat_k(t_j) - y_k(t_j)| / scale_k`: Kim et al.'s loss, the mean absolute
    error of the scaled states."""
    return jnp.mean(jnp.abs(predict(field, data, **solve_options) - data.ys) / data.scale)


def kim_optimizer(
    learning_rate: float = 5e-3, grad_norm: float | None = None
) -> optax.GradientTransformation:
    """Kim et al.'s optimizer: AdamW (betas 0.9, 0.999; weight decay 1e-6), after every
    gradient is rescaled to norm `grad_norm` (their POLLU run: 100) if given."""
    adamw = optax.adamw(learning_rate, b1=0.9, b2=0.999, weight_decay=1e-6)
    if grad_norm is None:
        return adamw
    return optax.chain(optax.normalize_by_update_norm(scale_factor=grad_norm), adamw)


class KineticsFit(NamedTuple):
    """The trained field (the parameters of the lowest loss seen), the loss before each
    epoch and the gradient's norm (`history`: `loss`, `grad_norm`, each `(epochs,)`), the
    epochs run and the wall seconds they took (compilation included)."""

    field: ScaledField
    history: dict[str, np.ndarray]
    epochs: int
    seconds: float


def fit_kinetics(
    field: ScaledField,
    data: KineticsData,
    *,
    epochs: int,
    optimizer: optax.GradientTransformation | None = None,
    epochs_per_record: int = 50,
    target: float | None = None,
    max_seconds: float | None = None,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    **solve_options,
) -> KineticsFit:
    """Full-batch training of `field` on `scaled_mae`, `epochs_per_record` epochs per
    compiled `lax.scan`, until `epochs`, the loss `target` (reached in a record: checked
    after it), or `max_seconds`; returns the parameters of the lowest loss seen.
    `optimizer` defaults to `kim_optimizer()`; `checkpoint`: a file the run is saved to and
    resumed from (`training.train_loop`); `solve_options` go to `predict`. Raises
    `TrainingDiverged` naming the epoch whose loss is NaN/inf (a solve that failed) or 1e6
    times the first."""
    epochs = positive_int("epochs", epochs)
    per = min(positive_int("epochs_per_record", epochs_per_record), epochs)
    if epochs % per:
        raise ValueError(f"epochs ({epochs}) must be a multiple of epochs_per_record ({per})")
    optimizer = kim_optimizer() if optimizer is None else optimizer
    params, static = eqx.partition(field, eqx.is_inexact_array)

    # A failed solve (non-finite field, step budget) leaves inf in its states instead of
    # raising: the loss turns inf and the loop names the epoch (`TrainingDiverged`).
    solve_options = {"throw": False} | solve_options

    def loss(p):
        return scaled_mae(eqx.combine(p, static), data, **solve_options)

    @jax.jit
    def advance(state):
        def epoch(carry, _):
            p, opt_state, best, best_loss = carry
            value, grads = jax.value_and_grad(loss)(p)
            # The parameters of the lowest loss so far (AdamW's loss is not monotone).
            better = value < best_loss
            best = jax.tree.map(lambda a, b: jnp.where(better, a, b), p, best)
            best_loss = jnp.where(better, value, best_loss)
            updates, opt_state = optimizer.update(grads, opt_state, p)
            p = optax.apply_updates(p, updates)
            return (p, opt_state, best, best_loss), (value, optax.tree.norm(grads))

        state, (values, norms) = jax.lax.scan(epoch, state, None, per)
        return state, {"loss": values, "grad_norm": norms}

    def stop(history: dict[str, list]) -> bool:
        return target is not None and float(np.min(history["loss"][-1])) <= target

    inf = jnp.asarray(jnp.inf, jax.tree.leaves(params)[0].dtype)
    result = train_loop(
        advance,
        (params, optimizer.init(params), params, inf),
        epochs // per,
        start_loss=None,
        every=per,
        progress=progress,
        description="fit kinetics",
        checkpoint=checkpoint,
        max_seconds=max_seconds,
        stop=stop,
    )
    history = {k: np.ravel(v) for k, v in result.history.items()}
    trained = eqx.combine(result.state[2], static)
    return KineticsFit(trained, history, result.records * per, result.wall_time_s)
