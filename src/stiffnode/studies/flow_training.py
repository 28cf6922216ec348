"""Training as an ODE, measured: optax SGD / momentum / Adam against the gradient flow
solved by Tsit5, Kvaerno5, BDF and Rodas3, and the seed's scipy setting on the same flow.

Two comparisons, each side by side in one run:

1. **To Adam's loss.** The tuned Adam's final train loss (after `updates` updates) is the
   target; every method runs until it reaches it (or its budget ends). Reported: gradient
   evaluations, Hessian-vector products, steps and wall time to the target, the final train
   loss and test metric, the solver statistics, the Hessian's extreme eigenvalues (Lanczos)
   along the way. Flows use windows that double (the loss of a classifier falls like
   `1/t` late in the flow, so equal windows would waste updates) and loose tolerances.
2. **The seed's setting.** scipy `solve_ivp` (LSODA, BDF) and `ode` (vode, zvode) on the
   same flow from the same start, atol 1e-8 / rtol 1e-6, finite-difference Jacobians (and
   the autodiff Hessian passed in), against stiffnode's BDF at the same tolerances, to the
   same flow time `seed_time`. A scipy run that exceeds its wall-time budget is stopped;
   both are then compared to the flow time scipy reached (scipy's time until the step that
   reached it was accepted, against stiffnode's BDF solved to exactly that time).

`run_study` writes `summary.json` after every method (a stopped study resumes, skipping the
methods already there), `history.json`, `table.md` and PNGs.
"""

import dataclasses
import itertools
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree

from .. import checkpoints
from .._validation import positive_int, positive_number
from ..data.datasets import alpine02_dataset, digits_dataset
from ..distributed import is_main, shard_batch
from ..flow import GradientFlowField, flow_solver, gradient_flow, run
from ..flow.scipy_baseline import scipy_gradient_flow
from ..models import ResNet
from ..solve import solve
from ..training.loop import has_diverged
from ..training.losses import model_mse
from .flow_report import plot_study, table


@dataclass(frozen=True)
class FlowTask:
    """A loss over parameters `params` (the model's inexact arrays; `static` the rest):
    `loss_on(params, **batch)` on the training `batch` (with per-sample weights `w`, so that
    zero-weight padding can make it split evenly over devices), and the metrics reported."""

    name: str
    params: PyTree[Array]
    loss_on: Callable[..., Array]
    batch: dict[str, Array]
    metrics: Callable[[PyTree[Array]], dict[str, float]]
    test_metric: str  # the key of `metrics` that is the test score
    description: str

    def loss(self, params: PyTree[Array]) -> Array:
        """The training loss `loss_on(params, **batch)`."""
        return self.loss_on(params, **self.batch)


def split_over_devices(task: FlowTask, devices) -> FlowTask:
    """`task` with its training batch padded (zero weights) to a multiple of the number of
    `devices` and split over them (`distributed.shard_batch`): every loss, gradient and
    Hessian-vector product then runs data-parallel, across processes too."""
    n, d = len(task.batch["w"]), len(devices)
    pad = -n % d

    def padded(x):
        x = np.asarray(x)
        return np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x

    batch = shard_batch({k: padded(v) for k, v in task.batch.items()}, devices)
    return dataclasses.replace(task, batch=batch)


def digits_task(seed: int = 0, hidden: int = 16) -> FlowTask:
    """A one-hidden-layer tanh MLP (64 -> hidden -> 10) classifying scikit-learn's 8x8
    digits (1,797 images, 75% train), mean softmax cross-entropy, full batch."""
    data = digits_dataset(seed, dtype=jnp.float64)
    model = eqx.nn.MLP(
        64, 10, hidden, 1, activation=jnp.tanh, key=jax.random.key(seed), dtype=jnp.float64
    )
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def logits(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    def loss_on(p, x, y, w):
        ce = optax.softmax_cross_entropy_with_integer_labels(logits(p, x), y)
        return jnp.sum(w * ce) / jnp.sum(w)

    batch = {"x": data.x_train, "y": data.y_train, "w": jnp.ones(len(data.y_train))}

    @jax.jit
    def metrics(p):
        train_acc = jnp.mean(jnp.argmax(logits(p, data.x_train), -1) == data.y_train)
        test_acc = jnp.mean(jnp.argmax(logits(p, data.x_test), -1) == data.y_test)
        train_loss = loss_on(p, **batch)
        return {"train_loss": train_loss, "train_accuracy": train_acc, "test_accuracy": test_acc}

    n = ravel_pytree(params)[0].size
    return FlowTask(
        "digits",
        params,
        loss_on,
        batch,
        metrics,
        "test_accuracy",
        f"tanh MLP 64-{hidden}-10 ({n:,} parameters) on sklearn digits "
        f"({data.x_train.shape[0]} train / {data.x_test.shape[0]} test), cross-entropy",
    )


def alpine02_task(seed: int = 0, width: int = 20, depth: int = 10) -> FlowTask:
    """The seed's ResNet (tanh, width 20, depth 10) on Alpine02 (900 train / 100 test),
    full-batch MSE."""
    data = alpine02_dataset(seed, 2, 900, 100, dtype=jnp.float64)
    model = ResNet(2, 1, width, depth, key=jax.random.key(seed), dtype=jnp.float64)
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def loss_on(p, x, y, w):
        squared = (jax.vmap(eqx.combine(p, static))(x) - y) ** 2
        return jnp.sum(w[:, None] * squared) / (jnp.sum(w) * y.shape[1])

    batch = {"x": data.x_train, "y": data.y_train, "w": jnp.ones(len(data.y_train))}

    @jax.jit
    def metrics(p):
        test_mse = model_mse(eqx.combine(p, static), data.x_test, data.y_test)
        return {"train_loss": loss_on(p, **batch), "test_mse": test_mse}

    n = ravel_pytree(params)[0].size
    return FlowTask(
        "alpine02",
        params,
        loss_on,
        batch,
        metrics,
        "test_mse",
        f"ResNet width {width} depth {depth} ({n:,} parameters) on Alpine02 (900 train / "
        "100 test), MSE",
    )


TASKS: dict[str, Callable[..., FlowTask]] = {"digits": digits_task, "alpine02": alpine02_task}

OPTIMIZERS: dict[str, Callable[[float], optax.GradientTransformation]] = {
    "sgd": optax.sgd,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": optax.adam,
}
LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0)

FLOW_SOLVERS = ("tsit5", "kvaerno5", "bdf", "rodas3")
METHODS = (*OPTIMIZERS, *(f"flow-{s}" for s in FLOW_SOLVERS), "seed")
"""The method names `run_study` (and `stiffnode flow --methods`) accepts."""
FLOW_TOLERANCES = {"tsit5": 1e-3, "kvaerno5": 0.1, "bdf": 0.1, "rodas3": 0.1}
"""rtol = atol per flow solver: loose, since the steps need not follow the flow closely.
Tsit5 at 0.1 lets the flow go unstable (digits: train loss 8.8e11 after 41 windows)."""
DENSE_HESSIAN_SOLVERS = ("kvaerno5",)  # diffrax ESDIRK: a dense Jacobian every iteration
MAX_DENSE_STUDY_PARAMS = 2000  # above this they are skipped (one step would take minutes)
FLOW_MAX_STEPS = 10_000  # per window: an explicit solver's window ends the run past this
FLOW_MAX_UPDATES = 60  # windows per flow (doubling from flow time 1: to t = 2^60)
FLOW_STIFFNESS_EVERY = 2  # the Hessian's extreme eigenvalues every this many windows
SCIPY_METHODS = (
    ("LSODA", "fd"),
    ("BDF", "fd"),
    ("vode", "fd"),
    ("zvode", "fd"),
    ("BDF", "autodiff"),
    ("LSODA", "autodiff"),
)
SEED_RTOL, SEED_ATOL = 1e-6, 1e-8


def _history_at_target(history: dict[str, list], target: float) -> dict[str, Any] | None:
    """The first history row whose loss is at or below `target`."""
    for i, loss in enumerate(history["loss"]):
        if loss <= target:
            return {k: v[i] for k, v in history.items()}
    return None


def _entry(task: FlowTask, result, target: float | None, kind: str, **extra) -> dict[str, Any]:
    h = result.history
    metrics = {k: float(v) for k, v in task.metrics(result.params).items()}
    entry = {
        "kind": kind,
        "updates": h["update"][-1],
        "grad_evals": h["grad_evals"][-1],
        "hvp_evals": (h.get("num_jvp_evals") or [0])[-1],
        "wall_time": h["wall_time"][-1],
        "compile_time": result.compile_time,
        "stop_reason": result.stop_reason,
        "final_train_loss": metrics["train_loss"],
        "test_metric": metrics[task.test_metric],
        "metrics": metrics,
        **extra,
    }
    if "flow_time" in h:
        entry["flow_time"] = h["flow_time"][-1]
        entry["solver_stats"] = {k: h[k][-1] for k in h if k.startswith("num_")}
    if target is not None:
        row = _history_at_target(h, target)
        entry["reached_target"] = row is not None
        if row is not None:
            entry["to_target"] = {
                k: row[k]
                for k in ("update", "grad_evals", "num_jvp_evals", "wall_time", "flow_time")
                if k in row
            }
    return entry


def _tune(task, name, updates, learning_rates):
    """The learning rate of `learning_rates` with the lowest final train loss. Rates whose
    run diverged (`train.has_diverged`: a non-finite final loss, or one far above the
    start) are left out; if all did, a `ValueError` says so."""
    start = float(jax.jit(task.loss_on)(task.params, **task.batch))
    best = None
    for lr in learning_rates:
        try:
            r = run(task.loss_on, task.params, OPTIMIZERS[name](lr), max_updates=updates,
                    batches=itertools.repeat(task.batch), throw=False)  # fmt: skip
        except FloatingPointError:
            continue
        final = r.history["loss"][-1]
        if has_diverged(final, start):
            continue
        if best is None or final < best[1]:
            best = (lr, final, r)
    if best is None:
        raise ValueError(
            f"{name}: training diverged at every learning rate of {list(learning_rates)} "
            f"(loss at the start {start:.3g}); try smaller ones"
        )
    return best


def seed_comparison(
    task: FlowTask,
    seed_time: float,
    budget: float,
    out: dict[str, Any],
    save: Callable[[], None],
    methods: tuple[tuple[str, str], ...] = SCIPY_METHODS,
) -> None:
    """scipy with the seed's tolerances vs stiffnode's BDF on the same flow to `seed_time`.

    Each `(method, jacobian)` of `methods` (see `scipy_gradient_flow`) gets `budget` wall
    seconds; a run that does not finish is compared with stiffnode's BDF timed to the flow
    time it reached. Results go into `out` under `scipy_<method>_<jacobian>`, and `save()` is
    called after each method; methods already in `out` are skipped (resume).
    """
    if all(f"scipy_{m}_{j}" in out for m, j in methods):
        return
    out.update(rtol=SEED_RTOL, atol=SEED_ATOL, flow_time=seed_time)
    field = GradientFlowField(task.loss)
    bdf = flow_solver("bdf", ravel_pytree(task.params)[0].size)
    out["stiffnode_solver"] = f"BDF(linear_solver={bdf.linear_solver!r})"

    @jax.jit
    def jax_bdf(params, t1):
        sol = solve(
            field, params, 0.0, t1, solver=bdf, rtol=SEED_RTOL, atol=SEED_ATOL, max_steps=100_000
        )
        return jax.tree.map(lambda y: y[-1], sol.ys), sol.stats

    def timed_jax(t1):
        t1 = jnp.asarray(t1, jnp.float64)
        jax.block_until_ready(jax_bdf(task.params, t1))  # compile
        start = time.perf_counter()
        end, stats = jax.block_until_ready(jax_bdf(task.params, t1))
        stats = {k: np.asarray(v).tolist() for k, v in stats.items()}
        return end, stats, time.perf_counter() - start

    end, stats, wall = timed_jax(seed_time)
    out["stiffnode_bdf"] = {"wall_time": wall, "stats": stats, "final_loss": float(task.loss(end))}
    flat_end = np.asarray(ravel_pytree(end)[0])
    for method, jac in methods:
        name = f"scipy_{method}_{jac}"
        if name in out:
            continue
        r = scipy_gradient_flow(
            task.loss,
            task.params,
            seed_time,
            method=method,
            jacobian=jac,
            rtol=SEED_RTOL,
            atol=SEED_ATOL,
            max_wall_time=budget,
        )
        entry = {**r.stats(), "finished": r.finished, "t_reached": r.t, "budget_s": budget}
        if r.finished:
            theta = np.asarray(ravel_pytree(r.params)[0])
            entry["max_abs_diff_to_stiffnode"] = float(np.max(np.abs(theta - flat_end)))
            entry["stiffnode_wall_time"] = wall
            entry["speedup"] = r.wall_time / wall
        elif r.t > 0:  # both timed to the flow time scipy reached
            _, _, wall_t = timed_jax(r.t)
            entry["stiffnode_wall_time_to_t_reached"] = wall_t
            entry["speedup_to_t_reached"] = r.wall_time_to_t / wall_t
        out[name] = entry
        save()


UPDATES = 1000
"""`run_study`'s (and `stiffnode flow`'s) default number of SGD/momentum/Adam updates."""
BUDGET = 120.0
"""Default wall seconds per flow solver."""
SEED_TIME = 200.0
"""Default flow time of the seed-setting scipy comparison."""
SEED_BUDGET = 120.0
"""Default wall seconds per scipy run."""


def run_study(
    task: str = "digits",
    out: str | os.PathLike = "flow_study",
    *,
    updates: int = UPDATES,
    budget: float = BUDGET,
    seed_time: float = SEED_TIME,
    seed_budget: float = SEED_BUDGET,
    methods: tuple[str, ...] | None = None,
    learning_rates: tuple[float, ...] | None = None,
    seed: int = 0,
    progress: bool = True,
    plot: bool = True,
    devices: Sequence[jax.Device] | None = None,
) -> dict[str, Any]:
    """Run the comparison on `task` ("digits" or "alpine02") and write `out/`.

    Args:
        updates: updates for SGD, momentum and Adam, each tuned over `learning_rates`
            (default `LEARNING_RATES`; the one with the lowest final train loss is kept).
        budget: wall seconds allowed to each flow solver to reach Adam's loss.
        seed_time: flow time of the seed-setting comparison; `seed_budget` the wall seconds
            allowed to each scipy run there.
        methods: a subset of `sgd momentum adam flow-tsit5 flow-kvaerno5 flow-bdf
            flow-rodas3 seed`
            (default all; `adam` always runs: its loss is the target).
        devices: the optax and flow runs split their training batch over these devices
            (`split_over_devices`; data parallel, over every process's devices when JAX runs
            as several, `stiffnode.distributed`: then the default is `jax.devices()`, and
            process 0 writes the files); default one device. The seed comparison (a scipy
            host loop) runs on one device in every process.
    """
    methods, learning_rates, updates = _checked(task, methods, learning_rates, updates)
    for name, value in (("budget", budget), ("seed_time", seed_time), ("seed_budget", seed_budget)):
        positive_number(name, value)
    if devices is None and jax.process_count() > 1:
        devices = jax.devices()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with jax.enable_x64(True):  # the study's losses, flows and scipy runs in float64
        ftask = TASKS[task](seed)
        # (the optax and flow runs data parallel when there are several devices)
        ptask = ftask if devices is None or len(devices) < 2 else split_over_devices(ftask, devices)
        record = _StudyRecord(out)
        record.summary.setdefault(
            "task",
            {"name": task, "description": ftask.description, "updates": updates,
             "budget_s": budget},
        )  # fmt: skip
        target = _run_optimizers(record, ftask, ptask, methods, updates, learning_rates)
        _run_flows(record, ftask, ptask, methods, target, budget, seed, progress)
        if "seed" in methods:
            seed_entry = record.summary.setdefault("seed", {})
            seed_comparison(
                ftask, seed_time, seed_budget, seed_entry, lambda: record.save("seed", seed_entry)
            )
    if is_main():
        if plot:
            plot_study(record.summary, record.histories, out)
        checkpoints.write_text(out / "table.md", table(record.summary))
    return record.summary


def _checked(task, methods, learning_rates, updates):
    """`run_study`'s choices, checked: (methods, learning rates, updates)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {sorted(TASKS)}")
    learning_rates = LEARNING_RATES if learning_rates is None else tuple(map(float, learning_rates))
    if not learning_rates:
        raise ValueError("learning_rates is empty")
    for lr in learning_rates:
        positive_number("each of learning_rates", lr)
    methods = METHODS if methods is None else tuple(methods)
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; use {METHODS}")
    return methods, learning_rates, positive_int("updates", updates)


class _StudyRecord:
    """`summary.json` and `history.json` of a study directory: read back if present (a
    stopped study resumes, skipping the methods already there), written after every method
    (over several processes, by process 0)."""

    def __init__(self, out: Path):
        self.summary_path, self.history_path = out / "summary.json", out / "history.json"
        self.summary = checkpoints.read_json_or_set_aside(self.summary_path, {})
        self.histories = checkpoints.read_json_or_set_aside(self.history_path, {})

    def save(self, name: str, entry: dict, history: dict | None = None) -> None:
        self.summary[name] = entry
        if history is not None:
            self.histories[name] = history
        if is_main():
            if history is not None:
                checkpoints.write_text(self.history_path, json.dumps(self.histories))
            checkpoints.write_text(self.summary_path, json.dumps(self.summary, indent=1))


def _run_optimizers(record: _StudyRecord, ftask, ptask, methods, updates, learning_rates):
    """Adam (always: its final train loss is the target) and the other optax methods asked
    for, each tuned over `learning_rates`; each optax entry told whether and when it reached
    the target. Returns the target."""
    for name in ("adam", *(m for m in OPTIMIZERS if m != "adam" and m in methods)):
        if name in record.summary:
            continue
        lr, _, r = _tune(ptask, name, updates, learning_rates)
        entry = _entry(ftask, r, None, "optax", learning_rate=lr,
                       learning_rates_tried=list(learning_rates))  # fmt: skip
        record.save(name, entry, r.history)
    target = record.summary["adam"]["final_train_loss"]
    record.summary["task"]["target_loss"] = target
    for name, entry in list(record.summary.items()):
        if entry.get("kind") == "optax" and "reached_target" not in entry:
            row = _history_at_target(record.histories[name], target)
            entry["reached_target"] = row is not None
            if row is not None:
                entry["to_target"] = {k: row[k] for k in ("update", "grad_evals", "wall_time")}
    return target


def _run_flows(record: _StudyRecord, ftask, ptask, methods, target, budget, seed, progress):
    """The gradient flow by each of `FLOW_SOLVERS` asked for, until it reaches `target` or
    its `budget` (wall seconds) ends; dense-Hessian solvers skipped above
    `MAX_DENSE_STUDY_PARAMS` parameters."""
    num_params = ravel_pytree(ftask.params)[0].size
    for solver in FLOW_SOLVERS:
        name = f"flow-{solver}"
        if name not in methods or name in record.summary:
            continue
        if solver in DENSE_HESSIAN_SOLVERS and num_params > MAX_DENSE_STUDY_PARAMS:
            skipped = (f"dense Hessian of {num_params:,} parameters: each Newton iteration "
                       f"forms {num_params:,} Hessian-vector products and an LU")  # fmt: skip
            record.save(name, {"kind": "flow", "solver": solver, "skipped": skipped})
            continue
        tolerance = FLOW_TOLERANCES[solver]
        opt = gradient_flow(ptask.loss_on, solver, window=optax.exponential_decay(1.0, 1, 2.0),
                            rtol=tolerance, atol=tolerance, max_steps=FLOW_MAX_STEPS)  # fmt: skip
        r = run(
            ptask.loss_on,
            ptask.params,
            opt,
            batches=itertools.repeat(ptask.batch),
            max_updates=FLOW_MAX_UPDATES,
            target_loss=target,
            max_wall_time=budget,
            stiffness_every=FLOW_STIFFNESS_EVERY,
            key=jax.random.key(seed),
            progress=progress,
            throw=False,  # a solver that fails is a result of the study
        )
        entry = _entry(ftask, r, target, "flow", solver=solver, rtol=tolerance, atol=tolerance,
                       window="1, doubling")  # fmt: skip
        record.save(name, entry, r.history)
