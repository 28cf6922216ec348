"""What bounds one small BDF solve on XLA:CPU: kernels per step times the cost of a kernel.

Measured in one run, after compilation (median of repeats):

- the wall time per step of `stiffnode.solve(robertson, solver="bdf")` at rtol 1e-6;
- the kernel-level operations (fusions, copies, dots, custom calls, nested loops and
  conditionals) at the top level of the compiled step loop's body, and of the Newton loop's
  body (run `num_newton_iters / num_steps` times per step), read from the optimised HLO;
- the cost of one kernel on 3-element arrays: a loop of K dependent tiny fusions (each
  behind an optimization barrier), per fusion.

Where the step loop runs as a graph of kernels (XLA's default threshold,
`STIFFNODE_XLA_DEFAULTS=0`; a vmapped batch; a vector field with a dot), kernels per step x
time per kernel is the floor of this program's time per step; a compiled BDF (diffsol)
takes ~0.6 us per step on the same problem (`stiff_solvers.py --only single`). With
stiffnode's threshold the loop compiles into one function (`loop_structure` says which loops
do, and what keeps the others from it).

`solvers`: per problem (Robertson, HIRES, POLLU) and solver (BDF, Rodas5P, Rodas3, auto,
diffrax's Kvaerno5): steps, time per step, how the loops run, and the kernel-level
operations of the step loop's body.

For a batch (`batched_pollu`): 16 POLLU members vmapped, as `solve_ensemble` runs each of
its chunks on GPU/TPU (on CPU it solves the members one after another): the time per member
and step, and the part of it that LAPACK's calls take alone (a member's LU, and the
triangular solves of every Newton iteration, one member after another), measured on their
own and multiplied by their counts per step. That part does not vectorise across members;
diffsol's whole step (`stiff_solvers.py --only ensembles`) is the comparison.

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
import numpy as np  # noqa: E402

import stiffnode as sn  # noqa: E402
from _common import RESULTS, environment  # noqa: E402
from stiffnode.solvers.dense_lu import lu_factor, lu_solve  # noqa: E402

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


_REFERENCE = re.compile(
    r"(?:body|condition|to_apply|calls|true_computation|false_computation)=%?([\w.\-]+)"
    r"|branch_computations=\{([^}]*)\}"
)


_BLOCKERS = (("dot", r"\sdot\("), ("custom call", r"custom-call\("), ("scatter", r"scatter\("))


def _computations(hlo: str) -> dict[str, str]:
    out = {}
    for text in re.split(r"\n(?=\S)", hlo):
        match = re.match(r"(?:ENTRY )?%?([\w.\-]+)", text)
        if match:
            out[match.group(1)] = text
    return out


def _loop_bodies(hlo: str) -> dict[str, dict[str, int]]:
    """Kernel-level operations at the top level of every while-loop body, by opcode."""
    computations = _computations(hlo)
    out = {}
    for name in set(re.findall(r"body=%?([\w.\-]+)", hlo)):
        ops = re.findall(r"=\s*[^=]*?\s([a-z][\w-]*)\(", computations.get(name, ""))
        kernels = [op for op in ops if op not in TRIVIAL]
        out[name] = {op: kernels.count(op) for op in sorted(set(kernels))}
    return out


def _referenced(text: str) -> list[str]:
    names = []
    for single, many in _REFERENCE.findall(text):
        names += [single] if single else [n.strip().lstrip("%") for n in many.split(",")]
    return names


def loop_structure(hlo: str) -> dict:
    """How XLA:CPU runs a compiled program's `while` loops: the outermost loops compiled
    into one function each (a call marked `xla_cpu_small_call`, everything inside it one
    function), and the loops left as graphs of kernels, with what keeps each from one
    function (a dot, a custom call such as LAPACK's, a scatter; else the byte budget)."""
    computations = _computations(hlo)

    def closure(name, seen):
        if name not in seen and name in computations:
            seen.add(name)
            for ref in _referenced(computations[name]):
                closure(ref, seen)
        return seen

    one_function, graphs = 0, []

    def walk(name, seen):
        nonlocal one_function
        if name in seen or name not in computations:
            return
        seen.add(name)
        for line in computations[name].split("\n"):
            if 'xla_cpu_small_call="true"' in line:
                one_function += 1
                continue
            if " while(" in line:
                graphs.append(re.search(r"body=%?([\w.\-]+)", line).group(1))
            for ref in _referenced(line):
                walk(ref, seen)

    walk(next(n for n, t in computations.items() if t.startswith("ENTRY")), set())
    why = set()
    for body in graphs:
        text = "\n".join(computations[c] for c in closure(body, set()))
        found = [k for k, pattern in _BLOCKERS if re.search(pattern, text)]
        why.add(", ".join(found) or "over the byte budget")
    return {"loops_in_one_function": one_function, "loops_as_kernel_graphs": len(graphs),
            "why_kernel_graphs": sorted(why)}  # fmt: skip


def solvers_table(repeats: int = 7) -> dict:
    """Per problem and solver (one solve at rtol 1e-6, atol 1e-10, after compilation): the
    steps, the time per step, how its loops run (`loop_structure`), and the kernel-level
    operations of its step loop's body, which are what runs per step where the loop is a
    graph of kernels (XLA's default threshold, `STIFFNODE_XLA_DEFAULTS=0`)."""
    table = {}
    for name in ("robertson", "hires", "pollu"):
        p = getattr(sn.problems, name)()
        for solver in ("bdf", "rodas5p", "rodas3", "auto", "kvaerno5"):

            def run(rtol, atol, p=p, solver=solver):
                sol = sn.solve(p.vector_field, jnp.asarray(p.y0), p.t0, p.t1, args=p.args,
                               solver=solver, rtol=rtol, atol=atol, max_steps=100_000)  # fmt: skip
                return sol.ys[-1], sol.stats["num_steps"]

            solve = jax.jit(run)
            args = (jnp.asarray(1e-6), jnp.asarray(1e-10))
            hlo = solve.lower(*args).compile().as_text()
            wall = _median_seconds(solve, *args, repeats=repeats)
            steps = int(solve(*args)[1])
            bodies = sorted(_loop_bodies(hlo).values(), key=lambda ops: -sum(ops.values()))
            row = {"steps": steps, "seconds_per_step": wall / steps, **loop_structure(hlo),
                   "step_body_ops": bodies[0] if bodies else {}}  # fmt: skip
            table[f"{name}/{solver}"] = row
            print(name, solver, {k: v for k, v in row.items() if k != "step_body_ops"}, flush=True)
    return table


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


def _lapack_costs(n: int, members: int, repeats: int, iterations: int = 300) -> dict:
    """Seconds of one `n x n` LU (LAPACK, unbatched: the batched BDF factorises the members
    that need it one after another) and of one pair of triangular solves for `members`
    vmapped members (one LAPACK call each, looping over the members)."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(n, n)) + n * np.eye(n))
    b = jnp.asarray(rng.normal(size=(members, n)))

    def factor_loop(a):
        return jax.lax.fori_loop(0, iterations, lambda i, a: a + 1e-12 * lu_factor(a).lu, a)

    factors = lu_factor(a)
    batched = jax.tree.map(lambda x: jnp.broadcast_to(x, (members, *x.shape)), factors)

    def solve_loop(f, b):
        return jax.lax.fori_loop(0, iterations, lambda i, x: 0.5 * lu_solve(f, x) + b, b)

    return {
        "lu_seconds": _median_seconds(jax.jit(factor_loop), a, repeats=repeats) / iterations,
        "solve_pair_seconds_batch": _median_seconds(
            jax.jit(jax.vmap(solve_loop)), batched, b, repeats=repeats
        )
        / iterations,
    }


def batched_pollu(members: int = 16, repeats: int = 7) -> dict:
    """Per member and step: the measured time of `members` vmapped POLLU solves (rtol 1e-7,
    atol 1e-12, the first 15 rates times 2^U(-1, 1): `pollu_batching.py`'s setting), the
    part of it spent in LAPACK (its calls timed alone, times their counts per step) and
    the kernels per step of the rest."""
    p = sn.problems.pollu()
    u = np.random.default_rng(0).uniform(-1, 1, (members, 15))
    rates = jnp.asarray(p.args)[None].repeat(members, 0).at[:, :15].multiply(2.0 ** u)

    def one(k):
        sol = sn.solve(p.vector_field, jnp.asarray(p.y0), p.t0, p.t1, args=k, solver="bdf",
                       rtol=1e-7, atol=1e-12)  # fmt: skip
        return sol.ys[-1], sol.stats

    solve = jax.jit(jax.vmap(one))
    wall = _median_seconds(solve, rates, repeats=repeats)
    stats = {k: np.asarray(v) for k, v in solve(rates)[1].items() if np.ndim(v) == 1}
    steps = int(stats["num_steps"].max())  # the batch steps until its slowest member is done
    bodies = _loop_bodies(solve.lower(rates).compile().as_text())
    ranked = sorted(bodies.values(), key=lambda ops: -sum(ops.values()))
    step_body, newton_body = ranked[0], ranked[1]
    newton_per_step = float(stats["num_newton_iters"].max() / steps)  # the slowest lane's
    lus_per_step = float(stats["num_lu_decompositions"].sum() / steps)  # over the members
    lapack = _lapack_costs(20, members, repeats)
    lapack_per_step = (
        lus_per_step * lapack["lu_seconds"] + newton_per_step * lapack["solve_pair_seconds_batch"]
    )
    record = {
        "members": members,
        "wall_seconds": wall,
        "steps": steps,
        "seconds_per_member_step": wall / steps / members,
        "step_body_ops": step_body,
        "newton_body_ops": newton_body,
        "newton_iterations_per_step": newton_per_step,
        "lu_decompositions_per_step": lus_per_step,
        "kernels_per_step": sum(step_body.values()) + newton_per_step * sum(newton_body.values()),
        "lapack": lapack,
        "lapack_seconds_per_member_step": lapack_per_step / members,
    }
    print({k: v for k, v in record.items() if "seconds" in k or k == "kernels_per_step"})
    return record


def _diffsol_seconds_per_step(problem: str = "robertson") -> float | None:
    """diffsol's seconds per step on `problem` in `stiff_solvers.json`'s single solves."""
    path = Path(RESULTS) / "stiff_solvers.json"
    if not path.exists():
        return None
    row = json.loads(path.read_text())["single"]["problems"][problem]["rows"]["diffsol"]
    return row["seconds"] / row["steps"]


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
    hlo = solve.lower(*args).compile().as_text()
    structure = loop_structure(hlo)
    ranked = sorted(_loop_bodies(hlo).values(), key=lambda ops: -sum(ops.values()))
    step_body, newton_body = ranked[0], ranked[1]
    newton_per_step = stats["num_newton_iters"] / stats["num_steps"]
    kernels_per_step = sum(step_body.values()) + newton_per_step * sum(newton_body.values())
    cost = kernel_cost()
    per_kernel = wall / stats["num_steps"] / kernels_per_step
    diffsol = _diffsol_seconds_per_step()
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
        # Where the step loop runs as a graph of kernels (XLA's default threshold): what a
        # kernel costs inside this program (the isolated kernel above sits behind an
        # optimization barrier and costs more), and how many of them fit in 2x a compiled
        # BDF's step (diffsol, from `stiff_solvers.py --only single`'s last run). With
        # stiffnode's threshold the loop is one function and these do not apply.
        "loop_structure": structure,
        "seconds_per_kernel_in_the_step": None if structure["loops_as_kernel_graphs"] == 0
        else per_kernel,
        "diffsol_seconds_per_step": diffsol,
        "kernels_per_step_for_2x_diffsol": None
        if diffsol is None or structure["loops_as_kernel_graphs"] == 0
        else 2 * diffsol / per_kernel,
        "batched_pollu": batched_pollu(),
        "solvers": solvers_table(),
    }
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print({k: v for k, v in record.items() if k not in ("environment", "stats")})
    return record


if __name__ == "__main__":
    main()
