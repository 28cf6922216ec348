"""Training many ResNet initialisations at once: one compiled program, vmapped over seeds.

Each trial is minibatch Adam with a reduce-on-plateau learning rate (optax's
`contrib.reduce_on_plateau`, stepped once per epoch on the epoch's mean loss, as PyTorch's
`ReduceLROnPlateau` is in the seed), on the seed's loss
`sqrt(mean_i (|F(x_i) - y_i|^2 + lam * p_i^2))` (`losses.penalised_loss`), where `p_i` is
nothing (RES), the parameters' L2 norm (RES L2) or the sum over layers of a stiffness proxy
of sample i's layer Jacobians (RES stiff). Trials differ only in their seed (initialisation,
shuffles, power vectors); all of them run in one `jit(vmap(...))`, the trial axis spread over
the given devices (by default every device of JAX's default backend, of every process when
JAX runs as several (`stiffnode.distributed`): on a CPU, as many per process as
`jax.config.update("jax_num_cpu_devices", n)` made before JAX's first use, one per core).
"""

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array

from .._validation import non_negative_number, positive_int, positive_number
from ..distributed import (
    first_rows_on_host,
    from_local_rows,
    gather_rows,
    local_row_indices,
    local_rows,
    on_other_processes,
    spread_rows,
)
from ..models import ResNet
from ..stiffness import (
    amortised_power_init,
    amortised_spectral_radius,
    forward_with_slopes,
    layer_frobenius,
    modulus_ratio,
    singular_ratio,
    spectral_radius_gelfand,
    spectral_radius_power,
    stiffness_ratio,
)
from .loop import train_loop
from .losses import l2_norm, model_mse, penalised_loss

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "gelu": jax.nn.gelu,
}


def _dense(proxy):
    return lambda slopes, weights: proxy(slopes[..., :, None] * weights)


# Per-layer penalties p_{n,i} from the slopes s and weights W of J = diag(s) W.
_LAYER_PENALTIES: dict[str, Callable] = {
    "frobenius": layer_frobenius,  # structured, no product formed
    "gelfand": _dense(spectral_radius_gelfand),
    "power": _dense(lambda J: spectral_radius_power(J, iters=20)),
    "singular": _dense(singular_ratio),
    "stiffness_ratio": _dense(stiffness_ratio),
    "modulus_ratio": _dense(modulus_ratio),
}

PENALTIES: tuple[str, ...] = ("none", "l2", *_LAYER_PENALTIES, "amortised")
"""Penalty names: `none`, `l2` (parameters' L2 norm), a per-layer stiffness proxy summed over
layers (`frobenius` structured; `gelfand` (10 squarings), `power` (20 iterations), `singular`
(ratio), `stiffness_ratio`, `modulus_ratio` on the dense Jacobians), or `amortised` (power
iteration with vectors kept across steps, `stiffness.amortised_spectral_radius`)."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Model and training settings shared by all trials (hashable: the compile key).

    `num_batches` minibatches of `batch_size` per epoch (default `n_train // batch_size`);
    when `num_batches * batch_size` exceeds `n_train` the epoch's permutation wraps around
    (the seed's POLLU-sized 100 x 20 on 1996 samples repeats 4 samples per epoch).
    History is recorded every `eval_every` epochs; its stiffness proxies are computed on
    the first `proxy_samples` training samples.
    """

    width: int
    depth: int
    epochs: int
    batch_size: int
    num_batches: int | None = None
    activation: str = "tanh"
    T: float = 1.0
    learning_rate: float = 1e-3
    plateau_factor: float = 0.1
    plateau_patience: int = 10
    plateau_rtol: float = 1e-4
    penalty: str = "none"
    lam: float = 0.0
    power_iters: int = 1
    eval_every: int = 1
    proxy_samples: int = 16

    def __post_init__(self):
        for name in (
            "width",
            "depth",
            "epochs",
            "batch_size",
            "power_iters",
            "eval_every",
            "proxy_samples",
            "plateau_patience",
        ):
            positive_int(name, getattr(self, name))
        if self.num_batches is not None:
            positive_int("num_batches", self.num_batches)
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {self.activation!r}; use one of {', '.join(ACTIVATIONS)}"
            )
        if self.penalty not in PENALTIES:
            raise ValueError(f"unknown penalty {self.penalty!r}; use one of {', '.join(PENALTIES)}")
        non_negative_number("lam", self.lam)
        positive_number("learning_rate", self.learning_rate)
        if self.epochs % self.eval_every:
            raise ValueError(f"eval_every={self.eval_every} must divide epochs={self.epochs}")


class TrialState(NamedTuple):
    """One trial's (or, stacked, all trials') training state: a pytree of arrays."""

    params: Any
    opt_state: Any
    vectors: Array  # amortised power vectors (n_train, N, 2, width); (1, 1, 2, 1) if unused
    key: Array
    epoch: Array


class TrialsResult(NamedTuple):
    """What `train_trials` returns; every array has a leading trial axis."""

    models: ResNet | None  # stacked (`trial_model(models, i)`); None: not kept
    history: dict[str, np.ndarray]  # (trials, n_evals), recorded after epochs `epochs`
    epochs: np.ndarray  # (n_evals,) the epoch count after which each history entry was taken
    final: dict[str, np.ndarray]  # (trials,); NaN for a diverged trial
    wall_time_s: float  # training time of the whole vmapped group (compilation included)
    diverged_at: np.ndarray  # (trials,) the epoch after which divergence was seen; 0: never


def trial_model(models: ResNet, i: int) -> ResNet:
    """Trial `i` of stacked models."""
    return jax.tree_util.tree_map(lambda a: a[i] if eqx.is_array(a) else a, models)


def _optimizer(config: TrainConfig, num_batches: int):
    return optax.chain(
        optax.adam(config.learning_rate),
        optax.contrib.reduce_on_plateau(
            factor=config.plateau_factor,
            patience=config.plateau_patience,
            rtol=config.plateau_rtol,
            atol=0.0,
            accumulation_size=num_batches,
        ),
    )


def _num_batches(config: TrainConfig, n_train: int) -> int:
    if config.batch_size > n_train:
        raise ValueError(f"batch_size={config.batch_size} exceeds the {n_train} training samples")
    return config.num_batches or n_train // config.batch_size


def _make_model(config: TrainConfig, in_size, out_size, key, dtype):
    return ResNet(
        in_size,
        out_size,
        config.width,
        config.depth,
        key=key,
        activation=ACTIVATIONS[config.activation],
        T=config.T,
        dtype=dtype,
    )


def _init_one(config, in_size, out_size, n_train, dtype, seed):
    key = jax.random.PRNGKey(seed)
    k_model, k_vec, k_train = jax.random.split(key, 3)
    params, static = eqx.partition(
        _make_model(config, in_size, out_size, k_model, dtype), eqx.is_inexact_array
    )
    opt_state = _optimizer(config, _num_batches(config, n_train)).init(params)
    shape = (n_train, config.depth, config.width) if config.penalty == "amortised" else (1, 1, 1)
    vectors = amortised_power_init(*shape, key=k_vec, dtype=dtype).vectors
    return TrialState(params, opt_state, vectors, k_train, jnp.zeros((), jnp.int32)), static


def sample_penalties(config: TrainConfig, model: ResNet, x, vectors=None):
    """`(predictions, p, next vectors)` for a batch `x`: `p_i` the penalty of sample i."""
    pred, slopes = jax.vmap(forward_with_slopes, in_axes=(None, 0))(model, x)
    if config.penalty in ("none", "l2"):
        p = l2_norm(model) if config.penalty == "l2" else jnp.zeros((), pred.dtype)
        return pred, p, vectors
    if config.penalty == "amortised":
        rho, vectors = amortised_spectral_radius(slopes, model.weights, vectors, config.power_iters)
        return pred, jnp.sum(rho, axis=-1), vectors
    return pred, jnp.sum(_LAYER_PENALTIES[config.penalty](slopes, model.weights), -1), vectors


def _eval_proxies(model: ResNet, x, dense: bool = True):
    """Mean over samples of the per-sample sum over layers of each proxy."""
    _, slopes = jax.vmap(forward_with_slopes, in_axes=(None, 0))(model, x)
    out = {"frobenius": jnp.mean(jnp.sum(layer_frobenius(slopes, model.weights), -1))}
    if dense:
        J = slopes[..., :, None] * model.weights
        out["gelfand"] = jnp.mean(jnp.sum(spectral_radius_gelfand(J), -1))
    return out


def _update_fn(config: TrainConfig, static, optimizer: optax.GradientTransformation):
    """The training step of every trial (and of the benchmarks):
    `update(params, opt_state, xb, yb, qb) -> (params, opt_state, loss, next vectors)`, one
    optimizer update on the penalised loss of the batch `(xb, yb)` (`qb`: the batch's
    amortised power vectors, or None)."""

    def loss_fn(params, xb, yb, qb):
        pred, p, q = sample_penalties(config, eqx.combine(params, static), xb, qb)
        return penalised_loss(pred, yb, p, config.lam), q

    def update(params, opt_state, xb, yb, qb):
        (value, q), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, xb, yb, qb)
        updates, opt_state = optimizer.update(grads, opt_state, params, value=value)
        return optax.apply_updates(params, updates), opt_state, value, q

    return update


def _build(config: TrainConfig, static, n_train: int):
    """The jitted, trial-vmapped chunk of `eval_every` epochs + evaluation (built once per
    `train_trials` call: each chunk of a run reuses its compilation)."""
    num_batches = _num_batches(config, n_train)
    optimizer = _optimizer(config, num_batches)
    total = num_batches * config.batch_size
    update = _update_fn(config, static, optimizer)
    amortised = config.penalty == "amortised"

    def step(carry, batch):
        params, opt_state, x, y = carry
        idx, qb = batch
        params, opt_state, value, q = update(params, opt_state, x[idx], y[idx], qb)
        return (params, opt_state, x, y), (value, q)

    def epoch(carry, _):
        state, x, y = carry
        key, k_perm = jax.random.split(state.key)
        perm = jax.random.permutation(k_perm, n_train)
        reps = -(-total // n_train)
        batches = jnp.tile(perm, reps)[:total].reshape(num_batches, config.batch_size)
        # The power vectors are gathered and scattered once per epoch, not per step.
        qs = state.vectors[batches] if amortised else None
        (params, opt_state, _, _), (losses, qs) = jax.lax.scan(
            step, (state.params, state.opt_state, x, y), (batches, qs)
        )
        vectors = state.vectors
        if amortised:
            vectors = vectors.at[batches.reshape(-1)].set(qs.reshape(-1, *qs.shape[2:]))
        state = TrialState(params, opt_state, vectors, key, state.epoch + 1)
        return (state, x, y), jnp.mean(losses)

    def chunk(state, x, y, x_test, y_test):
        (state, _, _), losses = jax.lax.scan(epoch, (state, x, y), None, length=config.eval_every)
        model = eqx.combine(state.params, static)
        metrics = {
            "loss": losses[-1],
            "ER": jnp.mean((jax.vmap(model)(x) - y) ** 2),
            "GE": jnp.mean((jax.vmap(model)(x_test) - y_test) ** 2),
            "l2_norm": l2_norm(state.params),
            # reduce_on_plateau's factor, wherever it sits in the optimizer chain
            "lr": config.learning_rate * optax.tree_utils.tree_get(state.opt_state, "scale"),
            **_eval_proxies(model, x[: config.proxy_samples]),
        }
        return state, metrics

    return eqx.filter_jit(jax.vmap(chunk, in_axes=(0, None, None, None, None)))


@eqx.filter_jit
def _final_one(model: ResNet, x, y, x_test, y_test, stiffness_samples: int, proxy_samples: int):
    def slopes_of(xs):
        return jax.vmap(forward_with_slopes, in_axes=(None, 0))(model, xs)[1]

    slopes = slopes_of(x[:proxy_samples])
    J = slopes[..., :, None] * model.weights
    J_stiff = slopes_of(x[:stiffness_samples])[..., :, None] * model.weights
    per_layer = {
        "frobenius": layer_frobenius(slopes, model.weights),
        "gelfand": spectral_radius_gelfand(J),
        "power": spectral_radius_power(J, iters=100),
        "singular_ratio": singular_ratio(J),
    }
    out = {k: jnp.mean(jnp.sum(v, -1)) for k, v in per_layer.items()}
    out["ER"] = jnp.mean((jax.vmap(model)(x) - y) ** 2)
    out["GE"] = jnp.mean((jax.vmap(model)(x_test) - y_test) ** 2)
    out["stiffness"] = jnp.mean(jnp.sum(spectral_radius_gelfand(J_stiff), -1))
    out["l2_norm"] = l2_norm(model)
    return out, J


FINAL_METRICS = (
    *("frobenius", "gelfand", "power", "singular_ratio", "ER", "GE", "stiffness", "l2_norm"),
    *("stiffness_ratio", "modulus_ratio"),
)
"""The keys of `final_metrics`."""


def final_metrics(
    models: ResNet,
    data,
    *,
    stiffness_samples: int = 256,
    proxy_samples: int = 16,
    skip: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per trial: ER, GE (MSE on the train and test sets), `stiffness` (the seed's: the sum
    over layers of the Gelfand spectral radius, mean over the first `stiffness_samples`
    training samples), `l2_norm`, and the proxies `frobenius`, `gelfand`, `power`,
    `singular_ratio` (sum over layers, mean over the first `proxy_samples` samples) and
    `stiffness_ratio`, `modulus_ratio` (median over those samples and layers, by numpy's
    eigenvalues: they are often `inf`-heavy). Trials where `skip` (bool, per trial) is
    true get NaN (a diverged model's metrics are not results)."""
    x, y, x_test, y_test = (jnp.asarray(a) for a in data[:4])
    num = jax.tree_util.tree_leaves(eqx.filter(models, eqx.is_array))[0].shape[0]
    results = []
    for i in range(num):
        if skip is not None and skip[i]:
            results.append(dict.fromkeys(FINAL_METRICS, np.nan))
            continue
        out, J = _final_one(
            trial_model(models, i), x, y, x_test, y_test, stiffness_samples, proxy_samples
        )
        out = {k: float(v) for k, v in out.items()}
        lam = np.linalg.eigvals(np.asarray(J, np.float64))
        re, mod = np.abs(lam.real), np.abs(lam)
        with np.errstate(divide="ignore", invalid="ignore"):
            out["stiffness_ratio"] = float(np.median(re.max(-1) / re.min(-1)))
            out["modulus_ratio"] = float(np.median(mod.max(-1) / mod.min(-1)))
        results.append(out)
    return {k: np.array([r[k] for r in results]) for k in FINAL_METRICS}


def train_trials(
    config: TrainConfig,
    data,
    seeds,
    *,
    dtype=jnp.float32,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every_s: float = 60.0,
    description: str = "training",
    devices: Sequence[jax.Device] | None = None,
    keep_models: bool = True,
) -> TrialsResult:
    """Train one ResNet per seed, all trials vmapped in one compiled program.

    Args:
        config: the model and training settings (`TrainConfig`).
        data: `(x_train, y_train, x_test, y_test)` (e.g. a `stiffnode.data.Dataset`).
        seeds: one int per trial; seed s initialises the model, the shuffles and the power
            vectors from `PRNGKey(s)` (the same seeds give the same initial models whatever
            the penalty).
        dtype: floating dtype of the models.
        progress: show a tqdm bar over the epochs.
        checkpoint: a file path; the training state is saved there every
            `checkpoint_every_s` seconds and at the end, and a run finding it resumes from
            it (same config, data and seeds; any devices). When `devices` span several
            processes, each process writes only its own trials, to
            `process_checkpoint(checkpoint, devices)`, and a run resumes from them on the
            same processes and devices (otherwise the trials restart).
        devices: the devices the trials are spread over (default `jax.devices()`: every
            device of every process, when JAX runs as several (`stiffnode.distributed`));
            with d devices, the trials are padded to a multiple of d by repeating the last
            (its duplicates are dropped from the result). Results depend on d only through
            round-off (vmapped programs over other numbers of trials round differently;
            float32 training amplifies it: the POLLU study's medians differ by ~2% between
            1 and 2 devices after 150 epochs), not on how the devices are spread over
            processes.
        keep_models: return the trained models; False: `TrialsResult.models` is None (the
            study keeps histories and final metrics only), and over several processes no
            trial's parameters are sent to the other processes.

    Returns:
        A `TrialsResult`: stacked models, history, final metrics (`final_metrics`), time.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty: give at least one trial seed")
    x, y, x_test, y_test = (jnp.asarray(a, dtype) for a in data[:4])
    for name, a in (("x_train", x), ("y_train", y), ("x_test", x_test), ("y_test", y_test)):
        if a.ndim != 2:
            raise ValueError(f"{name} must be 2-D (samples, features), got shape {a.shape}")
        if not np.all(np.isfinite(np.asarray(a))):
            raise ValueError(f"{name} contains NaN or inf")
    if x.shape[0] != y.shape[0] or x_test.shape[0] != y_test.shape[0]:
        raise ValueError("x and y differ in their number of samples")
    n_train = x.shape[0]
    _num_batches(config, n_train)
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty: give at least one device")

    states, statics = zip(
        *(_init_one(config, x.shape[1], y.shape[1], n_train, dtype, s) for s in seeds), strict=True
    )
    static = statics[0]
    state = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *states)
    num = len(seeds)
    start_error = np.asarray(_training_error(state.params, static, x, y))
    run_chunk = _build(config, static, n_train)

    def advance(state):
        state, metrics = run_chunk(state, x, y, x_test, y_test)
        return state, first_rows_on_host(metrics, num)

    spread = spread_rows(state, devices, num, "trials")
    across_processes = on_other_processes(devices)
    if across_processes:
        # Each process checkpoints its own devices' trials (no traffic between processes).
        host_state = dict(
            to_host=local_rows,
            from_host=lambda host: from_local_rows(host, devices, spread, "trials"),
            across_processes=True,
        )
        checkpoint = None if checkpoint is None else process_checkpoint(checkpoint, devices)
    else:
        host_state = dict(
            to_host=lambda state: first_rows_on_host(state, num),
            from_host=lambda host: spread_rows(host, devices, num, "trials"),
        )
    result = train_loop(
        advance,
        spread,
        config.epochs // config.eval_every,
        start_loss=start_error,
        loss_key="ER",
        every=config.eval_every,
        members=True,
        progress=progress,
        description=description,
        show=("ER", "GE"),
        checkpoint=checkpoint,
        checkpoint_every_s=checkpoint_every_s,
        **host_state,
    )
    models = None
    if keep_models or not across_processes:
        params = jax.tree_util.tree_map(jnp.asarray, first_rows_on_host(result.state.params, num))
        models = eqx.combine(params, static)
    skip = result.diverged_at > 0
    if across_processes:  # each process evaluates its own trials (host work: eigenvalues)
        mine = local_row_indices(result.state.params)
        own_skip = np.array([i >= num or skip[i] for i in mine])  # (padding: skipped)
        own = jax.tree_util.tree_map(jnp.asarray, local_rows(result.state.params))
        own_models = eqx.combine(own, static)
        own_final = final_metrics(own_models, (x, y, x_test, y_test),
                                  proxy_samples=config.proxy_samples, skip=own_skip)  # fmt: skip
        final = gather_rows(own_final, devices, len(jax.tree_util.tree_leaves(spread)[0]), "trials")
        final = {k: v[:num] for k, v in final.items()}
    else:
        final = final_metrics(models, (x, y, x_test, y_test),
                              proxy_samples=config.proxy_samples, skip=skip)  # fmt: skip
    epochs = np.arange(1, config.epochs // config.eval_every + 1) * config.eval_every
    return TrialsResult(
        models if keep_models else None,
        result.history,
        epochs,
        final,
        result.wall_time_s,
        result.diverged_at,
    )


@functools.partial(jax.jit, static_argnums=1)
def _training_error(params, static, x, y):
    """Per trial, the MSE on the training set (the stacked trials' `params`)."""
    return jax.vmap(lambda p: model_mse(eqx.combine(p, static), x, y))(params)


def process_checkpoint(checkpoint: str | os.PathLike, devices: Sequence[jax.Device]) -> Path:
    """This process's checkpoint file when `devices` span several processes:
    `NAME.process-I-of-P.D-devices.npz` beside `checkpoint` (`NAME.npz`)."""
    path = Path(checkpoint)
    count = len({d.process_index for d in devices})
    tag = f"process-{jax.process_index()}-of-{count}.{len(devices)}-devices"
    return path.with_name(f"{path.stem}.{tag}{path.suffix}")


def penalised_step_fn(config: TrainConfig, model: ResNet, n_train: int):
    """`(step, state)`: one un-vmapped training step `step(state, xb, yb, idx)` of `config`'s
    loss, for benchmarks (the study's own update, `_update_fn`); `state = (params,
    opt_state, vectors)`."""
    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimizer = _optimizer(config, _num_batches(config, n_train))
    shape = (n_train, config.depth, config.width) if config.penalty == "amortised" else (1, 1, 1)
    vectors = amortised_power_init(
        *shape, key=jax.random.PRNGKey(1), dtype=model.weights.dtype
    ).vectors

    update = _update_fn(config, static, optimizer)

    def step(state, xb, yb, idx):
        params, opt_state, vectors = state
        qb = vectors[idx] if config.penalty == "amortised" else None
        params, opt_state, _, q = update(params, opt_state, xb, yb, qb)
        if config.penalty == "amortised":
            vectors = vectors.at[idx].set(q)
        return params, opt_state, vectors

    return step, (params, optimizer.init(params), vectors)
