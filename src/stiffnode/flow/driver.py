"""Run any optax optimizer, the gradient flow included, to a stopping rule, recording the
loss, the work and the flow's stiffness as it goes; resumable from a checkpoint."""

import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
from jaxtyping import Array, PyTree
from tqdm.auto import tqdm

from .. import checkpoints
from .._validation import positive_int, positive_number
from ..distributed import agree, spans_processes
from ..training.loop import TrainingDiverged, has_diverged
from .transform import GradientFlowState
from .vector_field import LossFn, hessian_extremes


@dataclass
class FlowRun:
    """What `run` returns: the final parameters, why it stopped, and one history row per
    update (`history[name]` is a list): `update`, `loss` and `grad_norm` (before the
    update), `wall_time` (cumulative seconds, after compilation, monitoring excluded),
    `grad_evals` (cumulative gradient evaluations inside the updates: one per update for
    ordinary optimizers, the solver's count for `gradient_flow`, -1 where the solver does
    not count them, as diffrax's Kvaerno), and for the flow
    `flow_time` and the solver's cumulative statistics (`FLOW_STAT_KEYS`); when asked,
    `hessian_min`/`hessian_max` and the metrics of `eval_fn` (None in the rows where they
    were not measured). All lists have the same length."""

    params: PyTree[Array]
    stop_reason: str
    history: dict[str, list] = field(default_factory=dict)
    compile_time: float = 0.0


def _flow_state(opt_state) -> GradientFlowState | None:
    leaves = jtu.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, GradientFlowState))
    found = [x for x in leaves if isinstance(x, GradientFlowState)]
    return found[0] if found else None


def _compiled(step, executables: dict, params, opt_state, batch, result: "FlowRun"):
    """`step` compiled ahead of time for these input shapes (timed into `compile_time`), so
    that no update's wall time includes compilation."""
    signature = jtu.tree_map(lambda x: (jnp.shape(x), jnp.result_type(x)), (params, batch))
    signature = str(jtu.tree_flatten(signature))
    if signature not in executables:
        start = time.perf_counter()
        executables[signature] = step.lower(params, opt_state, batch).compile()
        result.compile_time += time.perf_counter() - start
    return executables[signature]


def run(
    loss_fn: LossFn,
    params: PyTree[Array],
    optimizer: optax.GradientTransformation,
    *,
    max_updates: int = 1000,
    target_loss: float | None = None,
    grad_tol: float | None = None,
    max_flow_time: float | None = None,
    max_wall_time: float | None = None,
    batches: Iterable[dict[str, Any]] | None = None,
    eval_fn: Callable[[PyTree[Array]], dict[str, float]] | None = None,
    eval_every: int = 1,
    stiffness_every: int | None = None,
    stiffness_iters: int = 20,
    key: Array | None = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = False,
    throw: bool = True,
) -> FlowRun:
    """Apply `optimizer` to `loss_fn(params, **batch)` until a stopping rule holds:
    `loss <= target_loss`, `||grad L|| <= grad_tol`, the flow time reaches `max_flow_time`
    (gradient flow only), `max_wall_time` seconds of updates, or `max_updates` updates.

    Each update is one jit-compiled call, compiled ahead and timed alone: the gradient
    (which `gradient_flow` does not need) and the optimizer's update. The loss and gradient
    norm recorded before each update are monitoring, evaluated outside the timed call.
    With `batches` (an iterable of keyword dicts for `loss_fn`), update `k` uses batch `k`
    (a minibatch run); otherwise the loss is full batch. With batches split over several
    processes (`stiffnode.distributed.shard_batch`), every process runs `run` with the same
    arguments, and the wall-time rule is process 0's (the others follow it).

    Args:
        eval_fn: `params -> {name: value}` (test metrics), called every `eval_every`
            updates and at the end; its time is not counted.
        stiffness_every: every so many updates, the Hessian's extreme eigenvalues by
            Lanczos (`hessian_extremes`, `stiffness_iters` products; not timed); needs `key`.
        checkpoint: a file path (`.npz`): parameters, optimizer state and the history of the
            updates applied are written there after every update, as one atomic file, and a
            run started with an existing checkpoint resumes from it, also to a larger
            `max_updates`. The optimizer must be the same (another one is a `ValueError`);
            a damaged checkpoint is set aside with a warning and the run starts afresh.
        progress: show a tqdm progress bar.

    An update that fails at run time (a solver's step budget exhausted, say) raises a
    `RuntimeError` naming the update (the checkpoint keeps the updates before it), as
    `stiffnode.solve(throw=True)` does; with `throw=False` it ends the run with
    `stop_reason = "failed: <message>"`, the parameters and history up to it kept.
    A loss that diverges (NaN/inf, or 1e6 times the first: `training.loop.has_diverged`)
    raises `TrainingDiverged` naming the update, non-finite parameters `FloatingPointError`.
    """
    max_updates = positive_int("max_updates", max_updates)
    eval_every = positive_int("eval_every", eval_every)
    for name, value in (
        ("target_loss", target_loss),
        ("grad_tol", grad_tol),
        ("max_flow_time", max_flow_time),
        ("max_wall_time", max_wall_time),
    ):
        positive_number(name, value, allow_none=True)
    if stiffness_every is not None:
        stiffness_every = positive_int("stiffness_every", stiffness_every)
        if key is None:
            raise ValueError("stiffness_every needs a PRNG key (key=jax.random.key(0))")
    optimizer = optax.with_extra_args_support(optimizer)

    opt_state = optimizer.init(params)
    is_flow = _flow_state(opt_state) is not None

    @jax.jit
    def step(params, opt_state, batch):
        # The gradient flow ignores its incoming updates and evaluates gradients itself.
        grads = params if is_flow else jax.grad(loss_fn)(params, **batch)
        updates, opt_state = optimizer.update(grads, opt_state, params, **batch)
        return optax.apply_updates(params, updates), opt_state

    @jax.jit
    def measure(params, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, **batch)
        return loss, optax.tree.norm(grads)

    result = FlowRun(params, "max_updates")
    done, wall, grad_evals = 0, 0.0, 0  # updates applied, their time and gradients
    resumed = None if checkpoint is None else _load(checkpoint, params, opt_state)
    if resumed is not None:
        params, opt_state, result, (done, wall, grad_evals) = resumed
    history = result.history
    batch_iter: Iterator[dict] | None = iter(batches) if batches is not None else None
    for _ in range(done):  # a resumed minibatch run continues with the next batch
        if batch_iter is not None:
            next(batch_iter)

    @jax.jit
    def lanczos(params, key, batch):
        return hessian_extremes(loss_fn, params, key=key, num_iters=stiffness_iters, **batch)

    executables: dict = {}
    bar = tqdm(total=max_updates, initial=done, disable=not progress, desc="updates")
    reason = "max_updates"
    try:
        for k in range(done, max_updates + 1):
            batch = next(batch_iter) if batch_iter is not None else {}
            loss, grad_norm = (float(x) for x in measure(params, batch))
            row: dict[str, Any] = {"update": k, "loss": loss, "grad_norm": grad_norm}
            flow = _flow_state(opt_state)
            if flow is not None:
                row["flow_time"] = float(flow.time)
                row.update({key_: int(v) for key_, v in flow.stats.items()})
            row["wall_time"], row["grad_evals"] = wall, grad_evals
            if eval_fn is not None and (k % eval_every == 0):
                row.update({name: float(v) for name, v in eval_fn(params).items()})
            if stiffness_every is not None and k % stiffness_every == 0:
                lo, hi = lanczos(params, jax.random.fold_in(key, k), batch)
                row["hessian_min"], row["hessian_max"] = float(lo), float(hi)
            _append(history, row)
            _check_loss(loss, history["loss"][0], k)
            reason = _stop_reason(row, k, max_updates, target_loss, grad_tol, max_flow_time)
            if reason is None and max_wall_time is not None:
                over = wall >= max_wall_time
                if spans_processes((params, batch)):  # all processes stop at the same update
                    over = bool(agree(np.bool_(over)))
                if over:
                    reason = "max_wall_time"
            if reason is not None:
                break
            compiled = _compiled(step, executables, params, opt_state, batch, result)
            start = time.perf_counter()
            try:
                new_params, opt_state = compiled(params, opt_state, batch)
                jax.block_until_ready(new_params)
            except (jax.errors.JaxRuntimeError, eqx.EquinoxRuntimeError) as e:
                if throw:
                    raise RuntimeError(
                        f"flow.run: update {k} failed: {_runtime_message(e)}"
                    ) from e
                reason = f"failed: {_runtime_message(e)}"
                break
            elapsed = time.perf_counter() - start
            params = new_params
            wall += elapsed
            flow = _flow_state(opt_state)
            step_evals = int(flow.window_stats["num_vf_evals"]) if is_flow else 1
            # A solver that does not count its gradients (NOT_COUNTED, -1) makes the total -1.
            grad_evals = -1 if min(grad_evals, step_evals) < 0 else grad_evals + step_evals
            _check_finite(params, k)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3e}")
            if checkpoint is not None:
                result.history = history
                _save(checkpoint, params, opt_state, result, (k + 1, wall, grad_evals))
    finally:
        bar.close()
    result.params, result.stop_reason, result.history = params, reason, history
    if eval_fn is not None and history["update"] and history["update"][-1] % eval_every:
        for name, v in eval_fn(params).items():
            history[name][-1] = float(v)
    return result


def _append(history: dict[str, list], row: dict[str, Any]):
    """One row; a column missing from a row (not measured then) holds None there."""
    length = len(history["update"]) if history else 0
    for name in row.keys() - history.keys():
        history[name] = [None] * length
    for name, column in history.items():
        column.append(row.get(name))


def _runtime_message(error: Exception) -> str:
    """The line of a runtime error that says what went wrong (e.g. the step budget)."""
    lines = [line for line in str(error).splitlines() if "stiffnode" in line or "Error" in line]
    return (lines[-1] if lines else str(error).splitlines()[0]).strip()[:300]


def _check_loss(loss: float, start: float, k: int):
    """The training loop's divergence rule (`training.loop.has_diverged`)."""
    if has_diverged(loss, start):
        raise TrainingDiverged(
            f"training diverged: the loss is {loss:.3g} at update {k} (at the start "
            f"{start:.3g}); lower the learning rate or tighten the flow's tolerances",
            k,
            loss,
        )


def _stop_reason(row, k, max_updates, target_loss, grad_tol, max_flow_time) -> str | None:
    if target_loss is not None and row["loss"] <= target_loss:
        return "target_loss"
    if grad_tol is not None and row["grad_norm"] <= grad_tol:
        return "grad_tol"
    if max_flow_time is not None and row.get("flow_time", 0.0) >= max_flow_time:
        return "max_flow_time"
    if k >= max_updates:
        return "max_updates"
    return None


def _check_finite(params, k):
    if not all(bool(jnp.all(jnp.isfinite(x))) for x in jtu.tree_leaves(params)):
        raise FloatingPointError(f"the parameters are not finite after update {k}")


def _save(path, params, opt_state, result: FlowRun, totals: tuple[int, float, int]):
    """One file, written atomically (`checkpoints.save`): the parameters and optimizer
    state after `totals[0]` updates with the history rows of those updates, their wall
    time and gradient evaluations."""
    meta = {
        "stop_reason": result.stop_reason,
        "compile_time": result.compile_time,
        "history": {k: v[: totals[0]] for k, v in result.history.items()},
        "totals": list(totals),
    }
    arrays = checkpoints.tree_arrays(params, "params") | checkpoints.tree_arrays(opt_state, "opt")
    checkpoints.save(path, arrays, meta)


def _load(path, params, opt_state) -> tuple[PyTree[Array], Any, FlowRun, tuple] | None:
    """What `_save` wrote; None if there is no checkpoint or it is damaged (set aside with a
    warning: the run starts afresh)."""
    loaded = checkpoints.load_or_set_aside(path)
    if loaded is None:
        return None
    arrays, meta = loaded
    params = checkpoints.tree_from_arrays(
        arrays, params, "params", what=f"the checkpoint {path} holds other parameters"
    )
    opt_state = checkpoints.tree_from_arrays(
        arrays,
        opt_state,
        "opt",
        what=f"the checkpoint {path} was made by another optimizer (its state differs)",
    )
    params, opt_state = jtu.tree_map(jnp.asarray, (params, opt_state))
    result = FlowRun(params, meta["stop_reason"], meta["history"], meta["compile_time"])
    done, wall, grad_evals = meta["totals"]
    return params, opt_state, result, (int(done), float(wall), int(grad_evals))
