"""stiffnode.solve against diffrax.diffeqsolve called directly, side by side in one run.

For each problem and solver (Tsit5, Kvaerno5), three jit-compiled solves at the same
tolerances (PID controller):

- `diffrax`: `diffrax.diffeqsolve` with diffrax's solver object as it comes (Kvaerno5: the
  VeryChord root finder) and `dt0=None` (in diffrax 0.7.2 a fixed first step 0.01);
- `stiffnode_same_dt0`: `stiffnode.solve` with the same solver object and `dt0=0.01`, the same
  steps as `diffrax`: the ratio of the two times is stiffnode's overhead (checks, statistics);
- `stiffnode`: `stiffnode.solve(..., solver=name)` as a user calls it: Hairer's initial-step
  rule, and for Kvaerno5 full Newton stage solves.

Times are medians after compilation; compile times are recorded separately.
Writes `benchmarks/results/solve_overhead.json` and `.png` (steps and time relative to
diffrax). Run: `python benchmarks/solve_overhead.py` (`--plot-only` redraws from the JSON).
"""

import jax

jax.config.update("jax_enable_x64", True)

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import stiffnode as sn  # noqa: E402
from _common import RESULTS, environment, time_compiled  # noqa: E402

RTOL, ATOL = 1e-6, 1e-9
STIFF_ONLY = {"robertson_t40", "van_der_pol_mu1000_t3000"}


def van_der_pol(mu):
    def f(t, y, args):
        return jnp.stack([y[1], mu * ((1 - y[0] ** 2) * y[1]) - y[0]])

    return f


def robertson(t, y, args):
    k1, k2, k3 = 0.04, 3e7, 1e4
    return jnp.stack([
        -k1 * y[0] + k3 * y[1] * y[2],
        k1 * y[0] - k3 * y[1] * y[2] - k2 * y[1] ** 2,
        k2 * y[1] ** 2,
    ])


def _resnet_problem():
    resnet = sn.ResNet(2, 1, 16, 8, key=jax.random.key(0), dtype=jnp.float64)
    node = sn.NeuralODE.from_resnet(resnet, "linear")
    x0 = jax.vmap(node.initial_state)(jax.random.uniform(jax.random.key(1), (64, 2)) * 4 - 2)
    return node.vector_field, x0


def problems():
    field, batch = _resnet_problem()
    return {
        "van_der_pol_mu100": (van_der_pol(100.0), jnp.array([2.0, 0.0]), 0.0, 10.0, False),
        "van_der_pol_mu1000_t3000": (
            van_der_pol(1000.0), jnp.array([2.0, 0.0]), 0.0, 3000.0, False
        ),
        "robertson_t40": (robertson, jnp.array([1.0, 0.0, 0.0]), 0.0, 40.0, False),
        "resnet_ode_w16_d8_batch64": (field, batch, 0.0, 1.0, True),
    }


def run_one(f, y0, t0, t1, batched, solver_name):
    diffrax_solver = {"tsit5": diffrax.Tsit5, "kvaerno5": diffrax.Kvaerno5}[solver_name]()

    def diffrax_solve(y):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(f), diffrax_solver, t0, t1, None, y,
            stepsize_controller=diffrax.PIDController(rtol=RTOL, atol=ATOL), max_steps=100_000,
        )
        return sol.ys[-1], sol.stats["num_steps"]

    def stiffnode_solve(solver, dt0):
        def go(y):
            sol = sn.solve(f, y, t0, t1, solver=solver, rtol=RTOL, atol=ATOL, dt0=dt0,
                           max_steps=100_000)
            return sol.ys[-1], sol.stats["num_steps"]
        return go

    variants = {
        "diffrax": diffrax_solve,
        "stiffnode_same_dt0": stiffnode_solve(diffrax_solver, 0.01),
        "stiffnode": stiffnode_solve(solver_name, None),
    }
    out = {}
    for name, fn in variants.items():
        fn = jax.vmap(fn) if batched else fn
        compile_s, run_s = time_compiled(fn, y0)
        _, steps = fn(y0)
        out[name] = {"compile_s": compile_s, "run_s": run_s,
                     "num_steps": int(jnp.max(steps))}
    out["overhead_ratio"] = out["stiffnode_same_dt0"]["run_s"] / out["diffrax"]["run_s"]
    out["time_ratio"] = out["stiffnode"]["run_s"] / out["diffrax"]["run_s"]
    return out


def plot(results, path):
    """Bars: steps and run time of each stiffnode variant relative to diffrax (= 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    names = list(results["problems"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.6 * len(names) + 1.5), sharey=True)
    y = np.arange(len(names))
    for ax, key, title in [(axes[0], "num_steps", "steps / diffrax"),
                           (axes[1], "run_s", "time after compilation / diffrax")]:
        for k, (variant, label) in enumerate([
            ("stiffnode_same_dt0", "stiffnode.solve, same solver object and dt0"),
            ("stiffnode", "stiffnode.solve(solver=name)"),
        ]):
            ratios = [results["problems"][n][variant][key] / results["problems"][n]["diffrax"][key]
                      for n in names]
            ax.barh(y + 0.38 * k, ratios, height=0.36, label=label)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xticks([0.1, 0.2, 0.5, 1, 2], ["0.1", "0.2", "0.5", "1", "2"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(title)
    axes[0].set_yticks(y + 0.19, names)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=9)
    fig.suptitle(f"stiffnode.solve vs diffrax.diffeqsolve (rtol {results['rtol']:g}, "
                 f"atol {results['atol']:g}); < 1 is better")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)


def main():
    path = os.path.join(RESULTS, "solve_overhead.json")
    if "--plot-only" in sys.argv:
        with open(path) as fh:
            plot(json.load(fh), path.replace(".json", ".png"))
        return
    results = {"description": __doc__.strip().splitlines()[0], "rtol": RTOL, "atol": ATOL,
               "environment": environment(), "problems": {}}
    for pname, (f, y0, t0, t1, batched) in problems().items():
        for solver_name in ["tsit5", "kvaerno5"]:
            if pname in STIFF_ONLY and solver_name == "tsit5":
                continue  # explicit solvers there are stability-bound: no comparison of interest
            res = run_one(f, y0, t0, t1, batched, solver_name)
            results["problems"][f"{pname}/{solver_name}"] = res
            print(f"{pname:28s} {solver_name:9s} overhead x{res['overhead_ratio']:.3f}  "
                  f"steps diffrax {res['diffrax']['num_steps']:6d} "
                  f"stiffnode {res['stiffnode']['num_steps']:6d}  "
                  f"time ratio x{res['time_ratio']:.3f}")
    os.makedirs(RESULTS, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(results, fh, indent=2)
    plot(results, path.replace(".json", ".png"))
    print("wrote", path, "and the PNG")


if __name__ == "__main__":
    main()
