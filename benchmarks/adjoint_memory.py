"""Memory and time per gradient of a neural ODE loss, by adjoint, against the number of steps.

Part 1. A neural ODE `dy/dt = MLP([y, t])` (state 16, width 64, depth 2, tanh, float32) on
`[0, 1]`, loss `||y(1)||^2` for a batch of 8 samples (one ODE state), solved by Tsit5 with N fixed
steps, N = 100 .. 10,000. For each adjoint (`recursive`: backprop through the solver with
recursive checkpointing; `direct`: diffrax's DirectAdjoint; `backsolve`: the continuous
adjoint solved backwards) we record XLA's compiled memory analysis of the jitted gradient
(`temp_size_in_bytes`: the scratch memory the gradient needs beyond its arguments and
outputs), compile time, and the median time per gradient after compilation (one run
where a gradient takes over 2 s).

Part 2. The price of backsolve's O(1) memory: the relative gradient error on a stiff-ish
linear problem `dy/dt = A y`, `A = [[-1, a], [0, -lam]]`, `y(0) = (1, 1)`, loss
`||y(1) - (0.5, 0)||^2`, gradient w.r.t. `A` (all four entries), against the exact gradient
of `||expm(A) y0 - target||^2` (autodiff through `jax.scipy.linalg.expm`, float64), for
`lam = 1 .. 1000`; Tsit5 with the PID controller at rtol = 1e-6, atol = 1e-9, recursive vs
backsolve (the backward solve with the same tolerances).

Writes `benchmarks/results/adjoint_memory.json` and `.png`.
Run: `.venv/bin/python benchmarks/adjoint_memory.py` (about 5 minutes on 2 CPU cores).
"""

import json
import os
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.flatten_util  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.scipy.linalg  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import stiffnode as sn  # noqa: E402
from _common import RESULTS, environment  # noqa: E402

STATE, WIDTH, DEPTH, BATCH = 16, 64, 2, 8
NUM_STEPS = (100, 300, 1000, 3000, 10000)
ADJOINTS = ("recursive", "direct", "backsolve")
LAMBDAS = (1.0, 10.0, 100.0, 300.0, 1000.0)
MIB = 2**20


class BatchField(eqx.Module):
    """`f(t, Y)` applying one `MLP([y, t])` to each row of the batch `Y` (one ODE state)."""

    field: sn.MLPVectorField

    def __call__(self, t, y, args=None):
        return jax.vmap(lambda row: self.field(t, row, args))(y)


def _gradient_fn(adjoint: str, num_steps: int):
    def loss(model, y0):
        sol = sn.solve(
            model,
            y0,
            0.0,
            1.0,
            solver="tsit5",
            dt0=1.0 / num_steps,
            stepsize_controller="constant",
            adjoint=adjoint,
            max_steps=num_steps,
        )
        return jnp.sum(sol.ys[-1] ** 2) / y0.shape[0]

    return eqx.filter_grad(loss)


def _measure(adjoint, num_steps, model, y0, repeats=3):
    params, static = eqx.partition(model, eqx.is_inexact_array)
    grad = _gradient_fn(adjoint, num_steps)

    def f(p, y):
        return grad(eqx.combine(p, static), y)

    start = time.perf_counter()
    compiled = jax.jit(f).lower(params, y0).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    start = time.perf_counter()
    jax.block_until_ready(compiled(params, y0))
    first = time.perf_counter() - start
    runs = [first]
    for _ in range(repeats if first < 2.0 else 0):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, y0))
        runs.append(time.perf_counter() - start)
    return {
        "temp_mib": memory.temp_size_in_bytes / MIB,
        "argument_mib": memory.argument_size_in_bytes / MIB,
        "output_mib": memory.output_size_in_bytes / MIB,
        "compile_s": compile_s,
        "time_per_gradient_s": statistics.median(runs),
    }


def memory_and_time():
    model = BatchField(
        sn.MLPVectorField(STATE, WIDTH, DEPTH, key=jax.random.key(0), dtype=jnp.float32)
    )
    y0 = jax.random.normal(jax.random.key(1), (BATCH, STATE), jnp.float32)
    rows = {adjoint: [] for adjoint in ADJOINTS}
    for n in NUM_STEPS:
        for adjoint in ADJOINTS:
            row = {"num_steps": n} | _measure(adjoint, n, model, y0)
            rows[adjoint].append(row)
            print(adjoint, row, flush=True)
    # Gradient agreement at N = 1000 (all three are gradients of nearly the same thing).
    grads = {a: _gradient_fn(a, 1000)(model, y0) for a in ADJOINTS}
    flat = {
        a: jax.flatten_util.ravel_pytree(eqx.filter(g, eqx.is_inexact_array))[0]
        for a, g in grads.items()
    }
    ref = flat["recursive"]
    agreement = {a: float(jnp.linalg.norm(v - ref) / jnp.linalg.norm(ref)) for a, v in flat.items()}
    return rows, agreement


def _stiff_loss_and_grad(lam, adjoint):
    y0 = jnp.array([1.0, 1.0])
    target = jnp.array([0.5, 0.0])

    def field(t, y, A):
        return A @ y

    def loss(A):
        sol = sn.solve(
            field, y0, 0.0, 1.0, args=A, solver="tsit5", rtol=1e-6, atol=1e-9, adjoint=adjoint
        )
        return jnp.sum((sol.ys[-1] - target) ** 2)

    def exact(A):
        return jnp.sum((jax.scipy.linalg.expm(A) @ y0 - target) ** 2)

    A = jnp.array([[-1.0, 2.0], [0.0, -lam]])
    g = jax.jit(jax.grad(loss))(A)
    g_exact = jax.grad(exact)(A)
    return float(jnp.linalg.norm(g - g_exact) / jnp.linalg.norm(g_exact))


def backsolve_error():
    out = {"lambda": list(LAMBDAS)}
    for adjoint in ("recursive", "backsolve"):
        out[adjoint] = [_stiff_loss_and_grad(lam, adjoint) for lam in LAMBDAS]
        print(adjoint, out[adjoint], flush=True)
    return out


def plot(rows, errors, path):
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    colors = {"recursive": "C0", "direct": "C1", "backsolve": "C2"}
    for adjoint, series in rows.items():
        n = [r["num_steps"] for r in series]
        style = dict(color=colors[adjoint], marker="o", label=adjoint)
        axes[0].loglog(n, [r["temp_mib"] for r in series], **style)
        axes[1].loglog(n, [r["time_per_gradient_s"] for r in series], **style)
    axes[0].set(
        xlabel="fixed Tsit5 steps N", ylabel="XLA temporaries (MiB)", title="memory of one gradient"
    )
    axes[1].set(xlabel="fixed Tsit5 steps N", ylabel="seconds", title="time per gradient")
    for adjoint in ("recursive", "backsolve"):
        axes[2].loglog(
            errors["lambda"], errors[adjoint], "o-", color=colors[adjoint], label=adjoint
        )
    axes[2].set(
        xlabel="stiffness lambda",
        ylabel="relative gradient error",
        title="gradient error vs exact (expm), rtol 1e-6",
    )
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    start = time.perf_counter()
    rows, agreement = memory_and_time()
    errors = backsolve_error()
    result = {
        "description": "memory (XLA compiled temp size) and time per gradient of a neural "
        "ODE loss vs number of fixed Tsit5 steps, per adjoint; backsolve's "
        "gradient error on a stiff-ish linear problem",
        "config": {
            "state": STATE,
            "width": WIDTH,
            "depth": DEPTH,
            "batch": BATCH,
            "dtype": "float32",
            "solver": "tsit5 fixed steps",
            "T": 1.0,
            "loss": "mean ||y(1)||^2",
        },
        "memory_time": rows,
        "relative_gradient_difference_to_recursive_at_N_1000": agreement,
        "stiff_gradient_error": errors
        | {
            "problem": "dy/dt = [[-1, 2], [0, -lambda]] y, y0 = (1, 1), loss ||y(1) - "
            "(0.5, 0)||^2, gradient w.r.t. A vs autodiff through expm",
            "solver": "tsit5, PID rtol 1e-6 atol 1e-9, float64",
        },
        "total_seconds": time.perf_counter() - start,
        "environment": environment(),
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "adjoint_memory.json"), "w") as f:
        json.dump(result, f, indent=2)
    plot(rows, errors, os.path.join(RESULTS, "adjoint_memory.png"))
    return result


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--plot"]:  # re-draw the PNG from the JSON
        with open(os.path.join(RESULTS, "adjoint_memory.json")) as f:
            saved = json.load(f)
        plot(
            saved["memory_time"],
            saved["stiff_gradient_error"],
            os.path.join(RESULTS, "adjoint_memory.png"),
        )
    else:
        main()
