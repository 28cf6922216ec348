"""The default gradient flow against the optimizers people use, side by side in one run.

Each task is a full-batch loss with its structure (`flow.least_squares` or
`flow.classification`) and a test metric. On each seed, Adam is tuned on a learning-rate
grid over a fixed budget of updates; its best final loss is the target. Every method then
runs from the same start until it reaches the target or its budget ends (`max_updates`
updates, `max_seconds` of updates), in jit-compiled `lax.while_loop`s of 50 updates (no
Python between updates), compiled ahead and timed alone (the best of two runs under a
second). Methods:

- `adam`: the tuned Adam, run to its own target.
- `lbfgs`: `optax.lbfgs` (zoom line search).
- `levenberg_marquardt`: `optimistix.LevenbergMarquardt` (dense Jacobian, QR), for
  least-squares tasks.
- `adam_lbfgs`: Adam (the tuned rate) for `adam_lbfgs_switch` updates, then L-BFGS.
- `flow`: `flow.gradient_flow(loss)` with its defaults (the pseudo-transient flow, with
  the Gauss-Newton curvature of the structured loss).
- `flow_hessian`: the same with the loss given as a plain function (Hessian curvature).

`run_race` writes `race.json` after each task and seed (a stopped run resumes), a table
and one loss-against-time plot per task.
"""

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
import optimistix as optx
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, PyTree
from tqdm.auto import tqdm

from .. import checkpoints
from .._validation import positive_int, positive_number
from ..data.datasets import alpine02_dataset, digits_dataset
from ..flow import AbstractOutputLoss, LeastSquares, classification, gradient_flow, least_squares
from ..models import ResNet


@dataclass(frozen=True, eq=False)  # compared by identity: a compiled loop per task
class Task:
    """A full-batch training problem: `loss(params, **batch)` (a `flow.least_squares` or
    `flow.classification` loss), parameters drawn by `init(key)`, and `metrics(params)`
    (test metrics, `test_metric` the one reported)."""

    name: str
    loss: AbstractOutputLoss
    batch: dict[str, Array]
    init: Callable[[Array], PyTree[Array]]
    metrics: Callable[[PyTree[Array]], dict[str, Array]]
    test_metric: str
    description: str


def _mlp(sizes: Sequence[int], key, dtype):
    """A tanh MLP as a list of `(W, b)`, LeCun-normal weights."""
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        key, sub = jax.random.split(key)
        w = jax.random.normal(sub, (fan_in, fan_out), dtype) / np.sqrt(fan_in)
        layers.append((w, jnp.zeros(fan_out, dtype)))
    return layers


def _mlp_apply(layers, x):
    for w, b in layers[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = layers[-1]
    return x @ w + b


def sinc_task(num_points: int = 200, width: int = 20, dtype=jnp.float64) -> Task:
    """A 1-width-width-1 tanh MLP fitting `sin(10 x) / (10 x)` on `num_points` points of
    [-1, 1], mean squared error; test: the MSE on 1,000 points between them."""
    x = jnp.linspace(-1.0, 1.0, num_points, dtype=dtype)[:, None]
    x_test = jnp.linspace(-0.999, 0.999, 1000, dtype=dtype)[:, None]

    def target(x):
        return jnp.sinc(10.0 * x / jnp.pi)

    def residuals(p, x, y):
        return (_mlp_apply(p, x) - y).ravel()

    def metrics(p):
        return {"test_mse": jnp.mean((_mlp_apply(p, x_test) - target(x_test)) ** 2)}

    n = (1 + 1) * width + (width + 1) * width + width + 1
    return Task(
        "sinc",
        least_squares(residuals),
        {"x": x, "y": target(x)},
        lambda key: _mlp([1, width, width, 1], key, dtype),
        metrics,
        "test_mse",
        f"tanh MLP 1-{width}-{width}-1 ({n:,} parameters) fitting sinc(10x) on "
        f"{num_points} points, MSE",
    )


def poisson_task(num_points: int = 64, width: int = 20, dtype=jnp.float64) -> Task:
    """A physics-informed loss: a 1-width-width-1 tanh MLP `u` with `-u'' = pi^2 sin(pi x)`
    at `num_points` collocation points of (0, 1) and `u(0) = u(1) = 0` (residuals weighted
    by 10); test: the relative L2 error against `sin(pi x)` on 1,000 points."""
    x = jnp.linspace(0.0, 1.0, num_points + 2, dtype=dtype)[1:-1]
    x_test = jnp.linspace(0.0, 1.0, 1000, dtype=dtype)

    def u(p, x):
        return _mlp_apply(p, jnp.reshape(x, (1, 1)))[0, 0]

    def residuals(p, x):
        u_xx = jax.vmap(jax.grad(jax.grad(u, argnums=1), argnums=1), (None, 0))(p, x)
        pde = -u_xx - jnp.pi**2 * jnp.sin(jnp.pi * x)
        boundary = 10.0 * jnp.stack([u(p, jnp.zeros((), dtype)), u(p, jnp.ones((), dtype))])
        return jnp.concatenate([pde / jnp.pi**2, boundary])

    def metrics(p):
        pred = jax.vmap(u, (None, 0))(p, x_test)
        exact = jnp.sin(jnp.pi * x_test)
        return {"test_rel_l2": jnp.linalg.norm(pred - exact) / jnp.linalg.norm(exact)}

    n = 2 * width + (width + 1) * width + width + 1
    return Task(
        "poisson",
        least_squares(residuals),
        {"x": x},
        lambda key: _mlp([1, width, width, 1], key, dtype),
        metrics,
        "test_rel_l2",
        f"physics-informed tanh MLP 1-{width}-{width}-1 ({n:,} parameters), -u'' = "
        f"pi^2 sin(pi x) on {num_points} points with u(0) = u(1) = 0",
    )


def digits_task(hidden: int = 16, dtype=jnp.float64) -> Task:
    """A tanh MLP 64-hidden-10 classifying scikit-learn's digits (75% train), mean
    cross-entropy; test: accuracy."""
    data = digits_dataset(0, dtype=dtype)

    def logits(p, x, y):
        return _mlp_apply(p, x)

    def metrics(p):
        predicted = jnp.argmax(_mlp_apply(p, data.x_test), -1)
        return {"test_accuracy": jnp.mean(predicted == data.y_test)}

    n = 65 * hidden + (hidden + 1) * 10
    return Task(
        "digits",
        classification(logits, "y"),
        {"x": data.x_train, "y": data.y_train},
        lambda key: _mlp([64, hidden, 10], key, dtype),
        metrics,
        "test_accuracy",
        f"tanh MLP 64-{hidden}-10 ({n:,} parameters) on sklearn digits "
        f"({data.x_train.shape[0]} train / {data.x_test.shape[0]} test), cross-entropy",
    )


def alpine02_task(width: int = 20, depth: int = 10, dtype=jnp.float64) -> Task:
    """The seed's ResNet (tanh, width 20, depth 10) on Alpine02 (900 train / 100 test),
    MSE; test: MSE."""
    data = alpine02_dataset(0, 2, 900, 100, dtype=dtype)
    template = ResNet(2, 1, width, depth, key=jax.random.key(0), dtype=dtype)
    static = eqx.partition(template, eqx.is_inexact_array)[1]

    def predict(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    def residuals(p, x, y):
        return (predict(p, x) - y).ravel()

    def init(key):
        model = ResNet(2, 1, width, depth, key=key, dtype=dtype)
        return eqx.partition(model, eqx.is_inexact_array)[0]

    def metrics(p):
        return {"test_mse": jnp.mean((predict(p, data.x_test) - data.y_test) ** 2)}

    n = ravel_pytree(init(jax.random.key(0)))[0].size
    return Task(
        "alpine02",
        least_squares(residuals),
        {"x": data.x_train, "y": data.y_train},
        init,
        metrics,
        "test_mse",
        f"the seed's ResNet, width {width} depth {depth} ({n:,} parameters), on Alpine02 "
        "(900 train / 100 test), MSE",
    )


TASKS: dict[str, Callable[[], Task]] = {
    "sinc": sinc_task,
    "poisson": poisson_task,
    "digits": digits_task,
    "alpine02": alpine02_task,
}
METHODS = ("adam", "lbfgs", "levenberg_marquardt", "adam_lbfgs", "flow", "flow_hessian")
CHUNK = {"levenberg_marquardt": 5}
"""Updates per compiled loop (50 by default): each Levenberg-Marquardt update builds the
dense Jacobian and its QR, seconds on the 4,281-parameter ResNet, so its wall-time budget
is checked more often."""
LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2)


class Stepper(eqx.Module):
    """One method as `init(params) -> state` and `step(params, state) -> (loss at
    params, new params, new state)`, so that every method runs in the same loop."""

    init: Callable = eqx.field(static=True)
    step: Callable = eqx.field(static=True)


def _optax_stepper(task: Task, opt: optax.GradientTransformationExtraArgs, needs: str) -> Stepper:
    """`needs`: "grad" (Adam), "line_search" (L-BFGS: value, gradient, value_fn) or
    "params" (the flow: it evaluates what it needs)."""

    def value_fn(p):
        return task.loss(p, **task.batch)

    def step(p, s):
        if needs == "params":
            loss, extra, grads = value_fn(p), task.batch, p
        else:
            loss, grads = jax.value_and_grad(value_fn)(p)
            extra = {} if needs == "grad" else {"value": loss, "grad": grads, "value_fn": value_fn}
        updates, s = opt.update(grads, s, p, **extra)
        return loss, optax.apply_updates(p, updates), s

    return Stepper(opt.init, step)


class _PlainLoss(eqx.Module):
    loss: AbstractOutputLoss

    def __call__(self, params, **batch):
        return self.loss(params, **batch)


def _levenberg_marquardt(task: Task) -> Stepper:
    if not isinstance(task.loss, LeastSquares):
        raise ValueError(f"levenberg_marquardt needs a least-squares task; {task.name} is not")
    solver = optx.LevenbergMarquardt(rtol=1e-12, atol=1e-12)

    def fn(p, args):
        return task.loss.outputs(p, **task.batch), None

    def init(p):
        f_struct = jax.eval_shape(lambda: fn(p, None)[0])
        return solver.init(fn, p, None, {}, f_struct, None, frozenset())

    def step(p, s):
        loss = task.loss(p, **task.batch)
        p, s, _ = solver.step(fn, p, None, {}, s, frozenset())
        return loss, p, s

    return Stepper(init, step)


def _adam_then_lbfgs(task: Task, learning_rate, switch: int) -> Stepper:
    adam = _optax_stepper(task, optax.adam(learning_rate), "grad")
    lbfgs = _optax_stepper(task, optax.lbfgs(), "line_search")

    def init(p):
        return jnp.zeros((), jnp.int32), adam.init(p), lbfgs.init(p)

    def step(p, s):
        k, sa, sl = s

        def with_adam():
            loss, p_new, sa_new = adam.step(p, sa)
            return loss, p_new, (k + 1, sa_new, sl)

        def with_lbfgs():
            loss, p_new, sl_new = lbfgs.step(p, sl)
            return loss, p_new, (k + 1, sa, sl_new)

        return jax.lax.cond(k < switch, with_adam, with_lbfgs)

    return Stepper(init, step)


def stepper(task: Task, method: str, learning_rate=1e-2, adam_lbfgs_switch: int = 200) -> Stepper:
    """The `Stepper` of `method` (one of `METHODS`) on `task`."""
    if method == "adam":
        return _optax_stepper(task, optax.adam(learning_rate), "grad")
    if method == "lbfgs":
        return _optax_stepper(task, optax.lbfgs(), "line_search")
    if method == "levenberg_marquardt":
        return _levenberg_marquardt(task)
    if method == "adam_lbfgs":
        return _adam_then_lbfgs(task, learning_rate, adam_lbfgs_switch)
    if method == "flow":
        return _optax_stepper(task, gradient_flow(task.loss), "params")
    if method == "flow_hessian":  # the same loss, its structure hidden: Hessian curvature
        return _optax_stepper(task, gradient_flow(_PlainLoss(task.loss)), "params")
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def _initial_state(task: Task, method: str, learning_rate, params):
    """The arrays of the method's state (a state may also hold non-arrays: optimistix keeps
    linear operators' closures; only arrays travel through loops, as in optimistix's own)."""
    return eqx.partition(stepper(task, method, learning_rate).init(params), eqx.is_array)[0]


def _run_chunk(task: Task, method: str, chunk: int, learning_rate, params, state, limit, target):
    """At most `min(chunk, limit)` updates, stopping before the first update whose starting
    loss is at most `target` (or NaN); returns the parameters and state reached, the loss
    at them if the run stopped there (else that before the last update), the updates made
    and the loss before each (NaN after)."""
    s = stepper(task, method, learning_rate)
    static = eqx.partition(s.init(params), eqx.is_array)[1]  # traced only: no work

    def cond(carry):
        k, _, _, loss, _ = carry
        return (k < jnp.minimum(chunk, limit)) & (loss > target) & ~jnp.isnan(loss)

    def body(carry):
        k, p, state, _, losses = carry
        loss, new_p, new_state = s.step(p, eqx.combine(state, static))
        new_state = eqx.partition(new_state, eqx.is_array)[0]
        done = (loss <= target) | jnp.isnan(loss)
        keep = lambda a, b: jax.tree.map(lambda x, y: jnp.where(done, x, y), a, b)  # noqa: E731
        losses = jnp.where(done, losses, losses.at[k].set(loss))
        return k + jnp.where(done, 0, 1), keep(p, new_p), keep(state, new_state), loss, losses

    dtype = ravel_pytree(params)[0].dtype
    losses = jnp.full(chunk, jnp.nan, dtype)
    start = (jnp.array(0), params, state, jnp.array(jnp.inf, dtype), losses)
    k, p, state, loss, losses = jax.lax.while_loop(cond, body, start)
    return p, state, loss, k, losses


_initial_state_compiled = eqx.filter_jit(_initial_state)
_run_chunk_compiled = eqx.filter_jit(_run_chunk)
_loss_compiled = eqx.filter_jit(lambda task, p: task.loss(p, **task.batch))


def run_to_target(
    task: Task,
    method: str,
    params: PyTree[Array],
    target: float,
    max_updates: int,
    learning_rate: float = 1e-2,
    max_seconds: float = float("inf"),
    chunk: int = 50,
) -> dict[str, Any]:
    """`method` from `params` until the loss is at most `target`, `max_updates` updates or
    `max_seconds` of updates; the updates run in compiled loops of `chunk` (no Python
    between them), compiled ahead, timed alone. Returns `params`, `updates`, `losses`
    (before each update, then the final loss), `final_loss`, `seconds`, `compile_seconds`."""
    lr = jnp.asarray(learning_rate)
    target = jnp.asarray(target)
    start = time.perf_counter()
    state = jax.block_until_ready(_initial_state_compiled(task, method, lr, params))
    limit = jnp.asarray(max_updates)
    run = _run_chunk_compiled.lower(task, method, chunk, lr, params, state, limit, target)
    run = run.compile()
    compile_seconds = time.perf_counter() - start
    p, k, seconds, losses = params, 0, 0.0, []
    loss = np.inf
    while k < max_updates and loss > target and not np.isnan(loss) and seconds < max_seconds:
        start = time.perf_counter()
        out = jax.block_until_ready(run(task, method, chunk, lr, p, state, limit - k, target))
        seconds += time.perf_counter() - start
        p, state, loss, made, chunk_losses = out
        loss, made = float(loss), int(made)
        losses.extend(np.asarray(chunk_losses)[:made].tolist())
        k += made
        if made == 0:
            break
    final = float(_loss_compiled(task, p))
    return {
        "params": p,
        "updates": k,
        "losses": [*losses, final],
        "final_loss": final,
        "seconds": seconds,
        "compile_seconds": compile_seconds,
    }


def race_one(
    task: Task,
    method: str,
    params: PyTree[Array],
    target: float,
    max_updates: int,
    learning_rate: float = 1e-2,
    max_seconds: float = float("inf"),
    repeats: int = 2,
) -> dict[str, Any]:
    """`method` on `task` from `params` to the loss `target` (`run_to_target`): wall time
    (the best of `repeats` runs, one when a run takes over a second), updates, the final
    loss, the test metrics and the loss curve (times interpolated uniformly over the
    updates in plots)."""
    best = None
    for _ in range(repeats):
        r = run_to_target(task, method, params, target, max_updates, learning_rate, max_seconds,
                          CHUNK.get(method, 50))  # fmt: skip
        best = r if best is None or r["seconds"] < best["seconds"] else best
        if r["seconds"] > 1.0:
            break
    metrics = {name: float(v) for name, v in jax.jit(task.metrics)(best.pop("params")).items()}
    return {
        "method": method,
        "reached": bool(best["final_loss"] <= target),
        **best,
        **metrics,
    }


def tune_adam(task: Task, params, updates: int, learning_rates=LEARNING_RATES):
    """(best learning rate, its final loss) over the grid, `updates` full-batch updates."""
    best = None
    for lr in learning_rates:
        final = run_to_target(task, "adam", params, -np.inf, updates, lr, chunk=updates)
        final = final["final_loss"]
        if np.isfinite(final) and (best is None or final < best[1]):
            best = (float(lr), final)
    if best is None:
        raise FloatingPointError(f"Adam diverged at every learning rate on {task.name}")
    return best


def run_race(
    out: str | os.PathLike,
    tasks: Sequence[str | Task] = tuple(TASKS),
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    methods: Sequence[str] = METHODS,
    adam_updates: int = 2000,
    max_updates: int = 2000,
    max_seconds: float = 60.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Every method on every task (a name of `TASKS`, or a `Task`) and seed (see the module
    docstring); writes
    `out/race.json` after each (task, seed) and resumes from it, then `table.md` and
    `race_<task>.png`. Returns the record."""
    for task in tasks:
        if not isinstance(task, Task) and task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose from {tuple(TASKS)} or give a Task")
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    positive_int("adam_updates", adam_updates)
    positive_int("max_updates", max_updates)
    positive_number("max_seconds", max_seconds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "race.json"
    record = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    settings = {"adam_updates": adam_updates, "max_updates": max_updates,
                "max_seconds": max_seconds}  # fmt: skip
    other = {k: record[k] for k in settings if k in record and record[k] != settings[k]}
    if record["runs"] and other:
        raise ValueError(
            f"{path} holds a race run with other settings ({other}; asked {settings}); "
            "use another output directory or the same settings"
        )
    record.update({"jax": jax.__version__, "backend": jax.default_backend(), **settings})
    built = {t.name: t for t in tasks if isinstance(t, Task)}
    names = [t.name if isinstance(t, Task) else t for t in tasks]
    todo = [(t, s) for t in names for s in seeds if f"{t}/{s}" not in record["runs"]]
    for name, seed in tqdm(todo, disable=not progress, desc="race"):
        task = built.get(name) or built.setdefault(name, TASKS[name]())
        record.setdefault("tasks", {})[name] = task.description
        params = task.init(jax.random.key(seed))
        lr, target = tune_adam(task, params, adam_updates)
        entries = []
        for method in methods:
            if method == "levenberg_marquardt" and not isinstance(task.loss, LeastSquares):
                continue
            entries.append(race_one(task, method, params, target, max_updates, lr, max_seconds))
        record["runs"][f"{name}/{seed}"] = {
            "task": name, "seed": seed, "learning_rate": lr, "target": target, "entries": entries
        }  # fmt: skip
        _write_json(path, record)
    record["summary"] = summarize(record)
    _write_json(path, record)
    (out / "table.md").write_text(table_markdown(record))
    plot_race(record, out)
    return record


def _write_json(path: Path, record):
    checkpoints.write_text(path, json.dumps(record, indent=1))


def summarize(record) -> dict[str, Any]:
    """Per task and method, over seeds: median seconds to the target relative to Adam's
    (a method that missed the target counts as infinitely slow), seeds reached, median
    updates, median test metric."""
    summary: dict[str, Any] = {}
    by_task: dict[str, list] = {}
    for run in record["runs"].values():
        by_task.setdefault(run["task"], []).append(run)
    for name, runs in by_task.items():
        methods = [e["method"] for e in runs[0]["entries"]]
        rows = {}
        for method in methods:
            ratios, updates, metric, reached = [], [], [], 0
            for run in runs:
                entries = {e["method"]: e for e in run["entries"]}
                e, adam = entries[method], entries["adam"]
                reached += e["reached"]
                ratios.append(e["seconds"] / adam["seconds"] if e["reached"] else np.inf)
                updates.append(e["updates"])
                metric.append([v for k, v in e.items() if k.startswith("test_")][0])
            rows[method] = {
                "time_vs_adam_median": float(np.median(ratios)),
                "time_vs_adam_per_seed": [float(r) for r in ratios],
                "reached": f"{reached}/{len(runs)}",
                "updates_median": float(np.median(updates)),
                "test_metric_median": float(np.median(metric)),
                "seconds_median": float(np.median([
                    {e["method"]: e for e in run["entries"]}[method]["seconds"] for run in runs
                ])),
            }  # fmt: skip
        summary[name] = rows
    return summary


def table_markdown(record) -> str:
    lines = [
        "| task | method | reached | time / Adam's (median) | seconds (median) | updates | test |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in record["summary"].items():
        for method, r in rows.items():
            lines.append(
                f"| {name} | {method} | {r['reached']} | {r['time_vs_adam_median']:.2f} | "
                f"{r['seconds_median']:.3f} | {r['updates_median']:.0f} | "
                f"{r['test_metric_median']:.3g} |"
            )
    return "\n".join(lines) + "\n"


def plot_race(record, out: Path):
    """One PNG per task: the loss against wall time of each method on the first seed
    (each update's time taken as the run's mean), the target dashed."""
    import matplotlib.pyplot as plt

    for key, run in record["runs"].items():
        name, seed = key.split("/")
        if int(seed) != min(r["seed"] for r in record["runs"].values() if r["task"] == name):
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for e in run["entries"]:
            losses = np.asarray(e["losses"])
            t = np.linspace(0, e["seconds"], len(losses))
            ax.loglog(np.maximum(t, 1e-5), losses, label=e["method"])
        ax.axhline(run["target"], color="k", ls="--", lw=0.8, label="Adam's final loss")
        ax.set(xlabel="wall time (s, after compilation)", ylabel="training loss",
               title=f"{name} (seed {seed})")  # fmt: skip
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"race_{name}.png", dpi=120)
        plt.close(fig)
