"""What bounds one small BDF solve on XLA:CPU: kernels per step times the cost of a kernel.

Measured in one run, after compilation (median of repeats):

- the wall time per step of `stiffnode.solve(robertson, solver="bdf")` at rtol 1e-6;
- the kernel-level operations (fusions, copies, dots, custom calls, nested loops and
  conditionals) at the top level of the compiled step loop's body, and of the Newton loop's
  body (run `num_newton_iters / num_steps` times per step), read from the optimised HLO;
- the cost of one kernel on 3-element arrays: a loop of K dependent tiny fusions (each
  behind an optimization barrier), per fusion.

kernels per step x time per kernel is the floor of this program's time per step; a
compiled BDF (diffsol) takes ~0.6 us per step on the same problem
(`stiff_solvers.py --only single`).

Run: `python benchmarks/step_floor.py`; writes `results/step_floor.json`.
"""

import jax

jax.config.update("jax_enable_x64", True)

import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import jax.numpy as jnp  # noqa: E402

import stiffnode as sn  # noqa: E402
from _common import RESULTS, environment  # noqa: E402

OUT = Path(RESULTS) / "step_floor.json"
TRIVIAL = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast"}


def _median_seconds(fn, *args, repeats):
    jax.block_until_ready(fn(*args))
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def _loop_bodies(hlo: str) -> dict[str, dict[str, int]]:
    """Kernel-level operations at the top level of every while-loop body, by opcode."""
    computations = {}
    for text in re.split(r"\n(?=\S)", hlo):
        match = re.match(r"(?:ENTRY )?%?([\w.\-]+)", text)
        if match:
            computations[match.group(1)] = text
    out = {}
    for name in set(re.findall(r"body=%?([\w.\-]+)", hlo)):
        ops = re.findall(r"=\s*[^=]*?\s([a-z][\w-]*)\(", computations.get(name, ""))
        kernels = [op for op in ops if op not in TRIVIAL]
        out[name] = {op: kernels.count(op) for op in sorted(set(kernels))}
    return out


def kernel_cost(repeats: int = 7, iterations: int = 1000) -> dict:
    """Seconds per tiny dependent fusion on a 3-vector, from loops of 50 and 200."""

    def chain(k):
        def body(i, x):
            for j in range(k):
                x = jax.lax.optimization_barrier(jnp.sin(x) * 1.0001 + j * 1e-9)
            return x

        return jax.jit(lambda x: jax.lax.fori_loop(0, iterations, body, x))

    per_iteration = {
        k: _median_seconds(chain(k), jnp.ones(3), repeats=repeats) / iterations for k in (50, 200)
    }
    return {
        "seconds_per_iteration": per_iteration,
        "seconds_per_kernel": (per_iteration[200] - per_iteration[50]) / 150,
    }


def main(repeats: int = 15) -> dict:
    p = sn.problems.robertson()

    def run(rtol, atol):
        sol = sn.solve(p.vector_field, jnp.asarray(p.y0), p.t0, p.t1, args=p.args,
                       solver="bdf", rtol=rtol, atol=atol)  # fmt: skip
        return sol.ys[-1], sol.stats

    solve = jax.jit(run)
    args = (jnp.asarray(1e-6), jnp.asarray(1e-10))
    wall = _median_seconds(solve, *args, repeats=repeats)
    stats = {k: int(v) for k, v in solve(*args)[1].items() if jnp.ndim(v) == 0}
    bodies = _loop_bodies(solve.lower(*args).compile().as_text())
    ranked = sorted(bodies.values(), key=lambda ops: -sum(ops.values()))
    step_body, newton_body = ranked[0], ranked[1]
    newton_per_step = stats["num_newton_iters"] / stats["num_steps"]
    kernels_per_step = sum(step_body.values()) + newton_per_step * sum(newton_body.values())
    cost = kernel_cost()
    record = {
        "environment": environment(),
        "load_average": os.getloadavg(),
        "problem": "robertson to t = 1e5, rtol 1e-6, atol 1e-10",
        "stats": stats,
        "wall_seconds": wall,
        "seconds_per_step": wall / stats["num_steps"],
        "step_body_ops": step_body,
        "newton_body_ops": newton_body,
        "newton_iterations_per_step": newton_per_step,
        "kernels_per_step": kernels_per_step,
        "kernel_cost": cost,
        "floor_seconds_per_step": kernels_per_step * cost["seconds_per_kernel"],
    }
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print({k: v for k, v in record.items() if k not in ("environment", "stats")})
    return record


if __name__ == "__main__":
    main()
