"""The one training loop: a compiled `advance` (an epoch, a chunk of epochs, or a batch of
steps, as one `lax.scan`) called until done, with the history, the progress bar (off by
default), divergence detection and atomic checkpoint/resume written once for every
trainer (`train.fit`, `train.fit_full_batch`, `cnf.fit`, `trials.train_trials`).

`flow.run` is the other driver: it applies an optimizer update by update to a stopping
rule (target loss, gradient norm, flow time, wall time), timing each update alone; it
shares this module's divergence rule and `checkpoints`' file format.
"""

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
from jaxtyping import ArrayLike

from .. import checkpoints
from ..distributed import agree, same_on_every_process

State = TypeVar("State")

DIVERGENCE_RATIO = 1e6
"""Training has diverged when its loss is NaN/inf or above this many times the loss before
training (`has_diverged`): `fit` raises `TrainingDiverged`, `train_trials` marks the trial,
the flow study drops the learning rate."""


class TrainingDiverged(FloatingPointError):
    """Training diverged: a non-finite loss, or one far above where it started. The
    message names the epoch (or step); no diverged parameters are returned as a result."""

    def __init__(self, message: str, epoch: int, loss: float):
        super().__init__(message)
        self.epoch = epoch
        self.loss = loss


def has_diverged(loss: ArrayLike, start: ArrayLike) -> np.ndarray:
    """`loss` is NaN/inf or above `DIVERGENCE_RATIO` times `|start|` (elementwise, numpy;
    `|start|` so that a loss that may be negative, as an NLL, is judged by its scale)."""
    loss, start = np.asarray(loss, float), np.asarray(start, float)
    with np.errstate(invalid="ignore", over="ignore"):
        scale = np.maximum(np.abs(start), np.finfo(np.float32).tiny)
        return ~np.isfinite(loss) | (loss > DIVERGENCE_RATIO * scale)


class LoopResult(NamedTuple):
    """What `train_loop` returns."""

    state: Any
    history: dict[str, np.ndarray]  # name -> (records, ...) (members: (members, records))
    records: int  # records done (fewer than asked when stopped or every member diverged)
    wall_time_s: float  # seconds in `advance`, a resumed run's earlier time included
    diverged_at: np.ndarray | None  # members: the step count at which each diverged; 0: never


def train_loop(
    advance: Callable[[State], tuple[State, dict[str, ArrayLike]]],
    state: State,
    num_records: int,
    *,
    start_loss: ArrayLike | None,
    loss_key: str = "loss",
    every: int = 1,
    members: bool = False,
    progress: bool = False,
    description: str = "training",
    unit: str = "epoch",
    show: tuple[str, ...] | None = None,
    callback: Callable[[int, State, dict[str, np.ndarray]], Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every_s: float = 60.0,
    to_host: Callable[[State], Any] = lambda s: s,
    from_host: Callable[[Any], State] = lambda s: s,
    across_processes: bool = False,
    stop: Callable[[dict[str, list]], bool] | None = None,
    max_seconds: float | None = None,
) -> LoopResult:
    """`state, metrics = advance(state)` `num_records` times, each covering `every` units
    (epochs or steps); `metrics[loss_key]` is checked after each call.

    Args:
        start_loss: the loss before training, the reference of `has_diverged`; None: the
            first element of the first record's loss (a record holding per-step losses).
        members: the metrics carry a leading axis of independent members (vmapped trials):
            each member is marked diverged on its own (`LoopResult.diverged_at`) and the
            loop stops early only when all have; otherwise divergence raises
            `TrainingDiverged` naming the unit (a per-step loss vector names its step).
        show: the metrics shown on the progress bar (default all).
        callback: `callback(record, state, metrics)` after each record (metrics on host).
        checkpoint: a file: the state (`to_host(state)`, restored by `from_host`), the
            history and the time so far are written there atomically every
            `checkpoint_every_s` seconds and at the end; a run finding it resumes from it.
        across_processes: `state` spans several processes (`stiffnode.distributed`), each
            writing its own share to its own `checkpoint`: process 0's clock says when to
            write, and a run resumes only if every process finds a checkpoint of the same
            record (otherwise all restart). Every process must then run the loop.
        stop: `stop(history)` (name -> the records' metrics so far, on host) before each
            record: True ends the loop (e.g. a target loss reached).
        max_seconds: no record is started once the loop has run this long in all
            (`advance`, callbacks and checkpoint writes; a resumed run's earlier time
            included).
    """
    history: dict[str, list] = {}
    done, wall_before = 0, 0.0
    checkpoint = None if checkpoint is None else Path(checkpoint)
    if checkpoint is not None:
        resumed = _load(checkpoint, to_host(state))
        if across_processes and not same_on_every_process(-1 if resumed is None else resumed[2]):
            resumed = None
        if resumed is not None:
            host, history, done, wall_before = resumed
            state = from_host(host)
    diverged_at = None
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_records * every, initial=done * every, desc=description, unit=unit)
    start = last_save = time.perf_counter()
    try:
        for record in range(done, num_records):
            if stop is not None and history and stop(history):
                break
            if max_seconds is not None and wall_before + time.perf_counter() - start >= max_seconds:
                break
            state, metrics = advance(state)
            metrics = {k: np.asarray(v) for k, v in metrics.items()}
            for name, value in metrics.items():
                history.setdefault(name, []).append(value)
            done = record + 1
            if start_loss is None:
                start_loss = np.ravel(history[loss_key][0])[0]
            diverged_at = _check(history[loss_key], start_loss, every, members, unit)
            if bar is not None:
                bar.update(every)
                shown = metrics if show is None else {k: metrics[k] for k in show}
                # (the median over members, or the last of a record's per-step values)
                bar.set_postfix(
                    {k: f"{np.nanmedian(v) if members else np.ravel(v)[-1]:.3g}"
                     for k, v in shown.items()},  # fmt: skip
                    refresh=False,
                )
            if callback is not None:
                callback(record, state, metrics)
            due = time.perf_counter() - last_save > checkpoint_every_s
            if checkpoint is not None and (agree(np.bool_(due)) if across_processes else due):
                wall = wall_before + time.perf_counter() - start
                _save(checkpoint, to_host(state), history, done, wall)
                last_save = time.perf_counter()
            if members and diverged_at.all():  # nothing left to train
                break
    finally:
        if bar is not None:
            bar.close()
    wall = wall_before + time.perf_counter() - start
    if checkpoint is not None:
        _save(checkpoint, to_host(state), history, done, wall)
    if members:  # (also when a finished run was resumed: nothing trained here)
        diverged_at = _check(history.get(loss_key, []), start_loss, every, True, unit)
    return LoopResult(state, _stack(history, members, num_records), done, wall, diverged_at)


def _check(losses: list, start, every: int, members: bool, unit: str) -> np.ndarray | None:
    """Members: the step count at which each first diverged (0: never). Else raise
    `TrainingDiverged` at the first diverged unit of the last record."""
    if members:
        bad = np.stack([has_diverged(v, start) for v in losses] or [has_diverged(start, start)])
        return np.where(bad.any(0), (bad.argmax(0) + 1) * every, 0)  # bad: (records, members)
    last = np.ravel(losses[-1])
    bad = has_diverged(last, start)
    if bad.any():
        i = int(bad.argmax())
        at = (len(losses) - 1) * every + (i + 1 if last.size > 1 else every)
        raise TrainingDiverged(
            f"training diverged in {unit} {at}: loss {last[i]:.3g} (before training "
            f"{float(start):.3g}); lower the learning rate",
            at,
            float(last[i]),
        )
    return None


def _stack(history: dict[str, list], members: bool, num_records: int) -> dict[str, np.ndarray]:
    """Records stacked (members: along the last axis, NaN for the records not trained: every
    member diverged, the stop rule held, or the time budget ran out)."""
    if not members:
        return {k: np.stack(v) if v else np.zeros(0) for k, v in history.items()}
    out = {}
    for k, v in history.items():
        v = v + [np.full_like(v[0], np.nan, dtype=float)] * (num_records - len(v))
        out[k] = np.stack(v, axis=-1)
    return out


def _save(path: Path, host_state, history: dict[str, list], done: int, wall: float):
    arrays = checkpoints.tree_arrays(host_state, "leaf")
    arrays |= {f"hist_{k}": np.stack(v) for k, v in history.items()}
    checkpoints.save(path, arrays, {"records_done": done, "wall_time_s": wall})


def _load(path: Path, like):
    """`(host state, history, records done, wall time)`, or None when there is no
    checkpoint or it is damaged (set aside with a warning: training restarts)."""
    loaded = checkpoints.load_or_set_aside(path, ("records_done", "wall_time_s"))
    if loaded is None:
        return None
    arrays, meta = loaded
    what = f"the checkpoint {path} was made by another configuration, data or seeds"
    state = checkpoints.tree_from_arrays(arrays, like, "leaf", what=what)
    history = {k[5:]: list(v) for k, v in arrays.items() if k.startswith("hist_")}
    return state, history, int(meta["records_done"]), float(meta["wall_time_s"])
