"""Minibatch training of any model (an equinox pytree) with optax."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree, Scalar

from .._validation import positive_int
from .loop import TrainingDiverged, train_loop
from .losses import model_mse

__all__ = ["LossFn", "TrainingDiverged", "fit", "fit_full_batch"]  # TrainingDiverged: fit's

LossFn = Callable[[Any, Array, Array], Scalar]

_LOSSES: dict[str, LossFn] = {"mse": model_mse}


def _loss_fn(loss: str | LossFn) -> LossFn:
    if callable(loss):
        return loss
    try:
        return _LOSSES[loss]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown loss {loss!r}; use one of {sorted(_LOSSES)} or a callable "
            "loss(model, x, y) -> scalar"
        ) from None


def _split_data(data) -> tuple[Array, Array, Array | None, Array | None]:
    """`(x_train, y_train, x_test, y_test)` from a `Dataset` or a 2- or 4-tuple."""
    if hasattr(data, "x_train"):
        return data.x_train, data.y_train, data.x_test, data.y_test
    if isinstance(data, tuple | list) and len(data) in (2, 4):
        return (*data, None, None) if len(data) == 2 else tuple(data)
    raise TypeError(
        "data must be a stiffnode.data.Dataset or a tuple (x_train, y_train) or "
        f"(x_train, y_train, x_test, y_test), got {type(data).__name__}"
    )


def _check_model_shapes(model, x, y):
    """The model maps one input sample to the shape of one target sample; a clear error
    naming the shapes otherwise (instead of a silently broadcast loss, or JAX's
    `dot_general` error for a wrong input width)."""
    try:
        out = jax.eval_shape(model, jax.ShapeDtypeStruct(x.shape[1:], x.dtype))
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"the model does not accept one input sample of shape {x.shape[1:]} "
            f"(x has shape {x.shape}): {str(e).splitlines()[0]}"
        ) from None
    if not hasattr(out, "shape") or out.shape != y.shape[1:]:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"the model maps one input sample {x.shape[1:]} to {got}, but one target sample "
            f"has shape {y.shape[1:]} (y has shape {y.shape})"
        )


def _check_xy(name: str, x, y) -> tuple[Array, Array]:
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim < 1 or y.ndim < 1:
        raise ValueError(
            f"{name} x and y need a leading sample axis, got shapes {x.shape} and {y.shape}"
        )
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"{name} x and y have different numbers of samples: {x.shape[0]} and {y.shape[0]}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{name} data is empty")
    for what, a in (("x", x), ("y", y)):
        if not jnp.issubdtype(a.dtype, jnp.inexact):
            raise TypeError(f"{name} {what} must be floating point, got dtype {a.dtype}")
        if not np.all(np.isfinite(np.asarray(a))):
            raise ValueError(f"{name} {what} contains NaN or inf")
    return x, y


@eqx.filter_jit
def _epoch(params, static, opt_state, optimizer, loss_fn, x, y, x_test, y_test, key, batch_size):
    """One epoch: shuffle, scan the optimizer over the minibatches, evaluate train/test MSE."""
    key, perm_key = jax.random.split(key)
    num_batches = x.shape[0] // batch_size
    batches = jax.random.permutation(perm_key, x.shape[0])[: num_batches * batch_size]
    batches = batches.reshape(num_batches, batch_size)

    def objective(p, xb, yb):
        return loss_fn(eqx.combine(p, static), xb, yb)

    def step(carry, idx):
        p, state = carry
        value, grads = jax.value_and_grad(objective)(p, x[idx], y[idx])
        updates, state = optimizer.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), value

    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), batches)
    model = eqx.combine(params, static)
    metrics = {"loss": jnp.mean(losses), "train_mse": model_mse(model, x, y)}
    if x_test is not None:
        metrics["test_mse"] = model_mse(model, x_test, y_test)
    return params, opt_state, key, metrics


def fit(
    model: PyTree,
    data,
    *,
    optimizer: optax.GradientTransformation | None = None,
    loss: str | LossFn = "mse",
    epochs: int,
    batch_size: int,
    key: PRNGKeyArray,
    callback: Callable[[int, PyTree, dict[str, float]], Any] | None = None,
    progress: bool = False,
) -> tuple[PyTree, dict[str, np.ndarray]]:
    """Minimise `loss(model, x_batch, y_batch)` over shuffled minibatches, `epochs` times.

    Args:
        model: a callable pytree (e.g. an equinox module) mapping one sample to its output;
            its floating-point array leaves are trained, everything else is kept as is.
        data: a `stiffnode.data.Dataset`, or `(x_train, y_train)` (no test metrics), or
            `(x_train, y_train, x_test, y_test)`; leading axis = samples.
        optimizer: an optax transformation; default `optax.adam(1e-3)`.
        loss: `"mse"` or a callable `loss(model, x, y) -> scalar` on a minibatch.
        epochs: passes over the training set.
        batch_size: samples per minibatch, `1 <= batch_size <= n_train`; each epoch
            reshuffles and drops the last `n_train % batch_size` samples of the permutation.
        key: PRNG key for the shuffles.
        callback: called after each epoch as `callback(epoch, model, metrics)` with the
            epoch's metrics as floats (this synchronises with the device every epoch).
        progress: show a tqdm progress bar over the epochs.

    Returns:
        The trained model and a history dict of per-epoch numpy arrays: `"loss"` (mean
        minibatch loss), `"train_mse"` and, with test data, `"test_mse"` (on the whole
        sets, after the epoch's updates).

    Raises:
        ValueError: the model's output for one sample does not have the shape of one target
            (loss "mse"), or it does not accept one input sample.
        TrainingDiverged: an epoch's mean loss is NaN/inf or above `loop.DIVERGENCE_RATIO`
            times the loss before training (checked after every epoch).
    """
    if optimizer is None:
        optimizer = optax.adam(1e-3)
    loss_fn = _loss_fn(loss)
    epochs = positive_int("epochs", epochs)
    batch_size = positive_int("batch_size", batch_size)
    x, y, x_test, y_test = _split_data(data)
    x, y = _check_xy("training", x, y)
    if (x_test is None) != (y_test is None):
        raise ValueError("give both x_test and y_test, or neither")
    if x_test is not None:
        x_test, y_test = _check_xy("test", x_test, y_test)
    if batch_size > x.shape[0]:
        raise ValueError(
            f"batch_size={batch_size} is larger than the training set ({x.shape[0]} samples)"
        )

    if loss == "mse":
        _check_model_shapes(model, x, y)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    start_loss = float(eqx.filter_jit(loss_fn)(model, x, y))

    def advance(state):
        params, opt_state, key = state
        params, opt_state, key, metrics = _epoch(
            params, static, opt_state, optimizer, loss_fn, x, y, x_test, y_test, key, batch_size
        )
        return (params, opt_state, key), metrics

    def report(epoch, state, metrics):
        callback(epoch, eqx.combine(state[0], static), {k: float(v) for k, v in metrics.items()})

    result = train_loop(
        advance,
        (params, optimizer.init(params), key),
        epochs,
        start_loss=start_loss,
        progress=progress,
        callback=None if callback is None else report,
    )
    return eqx.combine(result.state[0], static), result.history


def fit_full_batch(
    model: eqx.Module,
    loss: Callable[[eqx.Module], Scalar],
    optimizer: optax.GradientTransformation,
    steps: int,
) -> tuple[eqx.Module, Float[np.ndarray, " steps"]]:
    """`steps` optax updates of `model` on the full-batch `loss(model)`, in one compiled
    `lax.scan`; returns the trained model and the loss before each step. Raises
    `TrainingDiverged` naming the first step whose loss is NaN/inf or 1e6 times the first."""
    steps = positive_int("steps", steps)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    @jax.jit
    def advance(state):
        def step(carry, _):
            p, opt_state = carry
            value, grads = jax.value_and_grad(lambda q: loss(eqx.combine(q, static)))(p)
            updates, opt_state = optimizer.update(grads, opt_state, p)
            return (optax.apply_updates(p, updates), opt_state), value

        state, values = jax.lax.scan(step, state, None, steps)
        return state, {"loss": values}

    # All steps in one record: divergence is checked (and named by its step) at the end.
    result = train_loop(
        advance, (params, optimizer.init(params)), 1, start_loss=None, every=steps, unit="step"
    )
    return eqx.combine(result.state[0], static), result.history["loss"][0]
