"""stiffnode's BDF and Rodas3 under each step-size controller, side by side in one run.

For Robertson (t = 1e5) and HIRES at rtol 1e-6 (atol as in `stiff_solvers.py`): BDF and
Rodas3 with their own controller (`solvers.SolverStepController`, the solver chooses step,
and for BDF the order) and with `diffrax.PIDController` (the controller chooses the step
from the solver's error estimate; BDF chooses its order), plus diffrax's Kvaerno5 under
the PID controller as the anchor. Per run: steps (accepted/rejected), f, Jacobian and LU
counts, the achieved error against the stored Radau reference, compile time and the median
wall time after compilation.

Run: `python benchmarks/solver_controllers.py`; writes `results/solver_controllers.json`.
"""

import jax

jax.config.update("jax_enable_x64", True)

import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import stiffnode as sn  # noqa: E402
from _common import RESULTS, environment, time_compiled  # noqa: E402
from stiffnode import problems  # noqa: E402

OUT = Path(RESULTS) / "solver_controllers.json"
REFERENCES = json.loads(
    (Path(__file__).parent.parent / "tests" / "data" / "stiff_references.json").read_text()
)
RTOL = 1e-6
CASES = {
    "robertson": (problems.robertson, 1e-10, 1e-10),  # make, atol, error floor
    "hires": (problems.hires, 1e-9, 1e-8),
}
RUNS = [
    ("bdf", "solver"),
    ("bdf", "pid"),
    ("rodas3", "solver"),
    ("rodas3", "pid"),
    ("kvaerno5", "pid"),
]


def main(repeats: int = 7) -> dict:
    record = {"environment": environment(), "load_average": os.getloadavg(), "rtol": RTOL}
    for name, (make, atol, floor) in CASES.items():
        p = make()
        ref = np.asarray(REFERENCES[name]["y"])
        rows = []
        for solver, controller in RUNS:

            def run(rtol, atol, solver=solver, controller=controller, p=p):
                sol = sn.solve(p.vector_field, jnp.asarray(p.y0), p.t0, p.t1, args=p.args,
                               solver=solver, stepsize_controller=controller, rtol=rtol,
                               atol=atol, max_steps=200_000)  # fmt: skip
                return sol.ys[-1], sol.stats

            args = (jnp.asarray(RTOL), jnp.asarray(atol))
            compile_s, run_s = time_compiled(run, *args, repeats=repeats)
            y, stats = jax.jit(run)(*args)
            error = float(np.max(np.abs(np.asarray(y) - ref) / (np.abs(ref) + floor)))
            row = {
                "solver": solver,
                "controller": controller,
                "atol": atol,
                "compile_s": compile_s,
                "wall_s": run_s,
                "error": error,
            } | {k: int(v) for k, v in stats.items() if np.ndim(v) == 0}
            rows.append(row)
            print(name, {k: v for k, v in row.items() if k != "atol"}, flush=True)
        record[name] = rows
        OUT.write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
