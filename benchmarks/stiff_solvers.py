"""stiffnode's BDF against diffrax Kvaerno5, scipy (BDF, LSODA, Radau) and SUNDIALS CVODE,
side by side in one run, at matched accuracy.

Sections (each written to `benchmarks/results/stiff_solvers.json` as soon as it finishes):

- `work_precision`: Robertson (t = 1e5), HIRES, POLLU over a sweep of tolerances
  (`rtol = 1e-4 .. 1e-9`, `atol = rtol * problem scale`). For every solver and tolerance:
  the achieved error against the stored tight Radau reference
  (`max_i |y_i - ref_i| / (|ref_i| + floor)`, floor per problem), the median wall time after
  compilation, function and Jacobian evaluations. The JAX solvers are compiled once per
  problem (tolerances are traced), compile time reported separately. CVODE gets the same
  analytic numpy Jacobian that scipy gets, dense direct linear solver; its `nfev` excludes
  nothing (no difference quotients are needed).
  Ratios at matched accuracy: each cost curve is interpolated in log-log against the
  error, and the ratio is read at errors both curves reach.
- `batch`: 1,024 Robertson problems with rate constants perturbed log-uniformly within a
  factor of 2, one vmapped jit-compiled BDF solve, against CVODE solving them one after
  another (same tolerances).
- `brusselator`: the 2-D Brusselator (forced, periodic) with 2 n^2 states: dense LU against
  matrix-free GMRES (no preconditioner) at n = 32 (2,048 states), GMRES alone at n = 64
  (8,192 states); the memory a dense Jacobian and its LU would need is recorded beside.

Run: `python benchmarks/stiff_solvers.py [--only SECTION ...] [--plot-only]` (sections
already in the JSON are kept when others are re-run).
"""

import jax

jax.config.update("jax_enable_x64", True)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import diffrax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import stiffnode as sn  # noqa: E402
from _common import RESULTS, environment  # noqa: E402
from stiffnode import problems  # noqa: E402
from stiffnode.solvers import BDF  # noqa: E402

OUT = Path(RESULTS) / "stiff_solvers.json"
REFERENCES = json.loads(
    (Path(__file__).parent.parent / "tests" / "data" / "stiff_references.json").read_text()
)
RTOLS = [1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9]
# atol = rtol * ATOL_SCALE; error floor in the achieved-error measure.
SETTINGS = {
    "robertson": {"make": problems.robertson, "atol_scale": 1e-4, "floor": 1e-10},
    "hires": {"make": problems.hires, "atol_scale": 1e-3, "floor": 1e-8},
    "pollu": {"make": problems.pollu, "atol_scale": 1e-3, "floor": 1e-8},
}
MAX_STEPS = 200_000


def _median_time(fn, repeats):
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def _error(y, ref, floor):
    return float(np.max(np.abs(np.asarray(y) - ref) / (np.abs(ref) + floor)))


def _cvode(p, rtol, atol):
    from sksundae.cvode import CVODE

    rhs, jac = problems.rhs_numpy(p), problems.jac_numpy(p)

    def rhsfn(t, y, yp):
        yp[:] = rhs(t, y)

    def jacfn(t, y, yp, JJ):
        JJ[:, :] = jac(t, y)

    solver = CVODE(rhsfn, rtol=rtol, atol=atol, jacfn=jacfn, max_num_steps=MAX_STEPS)

    def run():
        return solver.solve(np.array([p.t0, p.t1]), np.array(p.y0, float))

    return run


def _jax_solver(p, solver):
    """A jitted `(rtol, atol) -> (y(t1), stats)` for a stiffnode solver name or object."""

    @jax.jit
    def run(rtol, atol):
        sol = sn.solve(
            p.vector_field,
            jnp.asarray(p.y0),
            p.t0,
            p.t1,
            args=p.args,
            solver=solver,
            rtol=rtol,
            atol=atol,
            max_steps=MAX_STEPS,
        )
        return sol.ys[-1], sol.stats

    return run


def _diffrax_kvaerno5(p):
    """diffrax's Kvaerno5 as it comes (VeryChord root finder, PID controller)."""

    @jax.jit
    def run(rtol, atol):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(p.vector_field),
            diffrax.Kvaerno5(),
            p.t0,
            p.t1,
            None,
            jnp.asarray(p.y0),
            args=p.args,
            max_steps=MAX_STEPS,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        )
        return sol.ys[-1], {"num_steps": sol.stats["num_steps"]}

    return run


def work_precision(repeats: int = 5) -> dict:
    out = {}
    for name, setting in SETTINGS.items():
        p = setting["make"]()
        ref = np.asarray(REFERENCES[name]["y"])
        rows = {}
        jax_solvers = {
            "stiffnode_bdf": _jax_solver(p, "bdf"),
            "stiffnode_ndf": _jax_solver(p, "ndf"),
            "stiffnode_kvaerno5": _jax_solver(p, "kvaerno5"),
            "diffrax_kvaerno5": _diffrax_kvaerno5(p),
        }
        for label, run in jax_solvers.items():
            rows[label] = []
            start = time.perf_counter()
            jax.block_until_ready(run(jnp.asarray(RTOLS[0]), jnp.asarray(RTOLS[0])))
            compile_s = time.perf_counter() - start
            for rtol in RTOLS:
                atol = rtol * setting["atol_scale"]
                args = (jnp.asarray(rtol), jnp.asarray(atol))
                y, stats = jax.block_until_ready(run(*args))
                seconds = _median_time(lambda a=args, r=run: jax.block_until_ready(r(*a)), repeats)
                stats = {k: np.asarray(v).tolist() for k, v in stats.items()}
                rows[label].append(
                    {
                        "rtol": rtol,
                        "atol": atol,
                        "error": _error(y, ref, setting["floor"]),
                        "seconds": seconds,
                        "compile_seconds": compile_s,
                        "nfev": stats.get("num_vf_evals"),
                        "njev": stats.get("num_jac_evals"),
                        "stats": stats,
                    }
                )
            print(name, label, "done", flush=True)
        for method in ["BDF", "LSODA", "Radau"]:
            rows[f"scipy_{method.lower()}"] = []
            rhs, jac = problems.rhs_numpy(p), problems.jac_numpy(p)
            for rtol in RTOLS:
                atol = rtol * setting["atol_scale"]

                def run(m=method, r=rtol, a=atol, p=p, rhs=rhs, jac=jac):
                    return solve_ivp(rhs, (p.t0, p.t1), p.y0, method=m, rtol=r, atol=a, jac=jac)

                sol = run()
                rows[f"scipy_{method.lower()}"].append(
                    {
                        "rtol": rtol,
                        "atol": atol,
                        "error": _error(sol.y[:, -1], ref, setting["floor"]),
                        "seconds": _median_time(run, max(1, repeats // 2)),
                        "nfev": int(sol.nfev),
                        "njev": int(sol.njev),
                        "nlu": int(sol.nlu),
                    }
                )
        rows["cvode"] = []
        for rtol in RTOLS:
            atol = rtol * setting["atol_scale"]
            run = _cvode(p, rtol, atol)
            sol = run()
            rows["cvode"].append(
                {
                    "rtol": rtol,
                    "atol": atol,
                    "error": _error(sol.y[-1], ref, setting["floor"]),
                    "seconds": _median_time(run, repeats),
                    "nfev": int(sol.nfev),
                    "njev": int(sol.njev),
                }
            )
        print(name, "baselines done", flush=True)
        out[name] = {"rows": rows, "matched": _matched(rows)}
    return out


def _curve(rows, key):
    pts = sorted((r["error"], r[key]) for r in rows if r.get(key) is not None and r["error"] > 0)
    return np.log10([e for e, _ in pts]), np.log10([c for _, c in pts])


def _ratio_at_matched_error(rows_a, rows_b, key):
    """Cost of a over cost of b at the errors both reach (log-log interpolation): median,
    min and max over a grid of 9 error levels."""
    ea, ca = _curve(rows_a, key)
    eb, cb = _curve(rows_b, key)
    if len(ea) < 2 or len(eb) < 2:
        return None
    lo, hi = max(ea.min(), eb.min()), min(ea.max(), eb.max())
    if lo >= hi:
        return None
    grid = np.linspace(lo, hi, 9)
    ratio = 10 ** (np.interp(grid, ea, ca) - np.interp(grid, eb, cb))
    return {
        "median": float(np.median(ratio)),
        "min": float(ratio.min()),
        "max": float(ratio.max()),
        "error_range": [float(10**lo), float(10**hi)],
    }


def _matched(rows):
    def evals(rows_):
        return [r | {"evals": (r["nfev"] or 0) + (r["njev"] or 0)} for r in rows_]

    out = {}
    for ours in ["stiffnode_bdf", "stiffnode_ndf"]:
        out[ours] = {
            "seconds_vs_diffrax_kvaerno5": _ratio_at_matched_error(
                rows[ours], rows["diffrax_kvaerno5"], "seconds"
            ),
            "seconds_vs_stiffnode_kvaerno5": _ratio_at_matched_error(
                rows[ours], rows["stiffnode_kvaerno5"], "seconds"
            ),
            "seconds_vs_cvode": _ratio_at_matched_error(rows[ours], rows["cvode"], "seconds"),
            "seconds_vs_scipy_bdf": _ratio_at_matched_error(
                rows[ours], rows["scipy_bdf"], "seconds"
            ),
            "nfev_vs_cvode": _ratio_at_matched_error(rows[ours], rows["cvode"], "nfev"),
            "njev_vs_cvode": _ratio_at_matched_error(rows[ours], rows["cvode"], "njev"),
            "nfev_plus_njev_vs_cvode": _ratio_at_matched_error(
                evals(rows[ours]), evals(rows["cvode"]), "evals"
            ),
        }
    return out


def _robertson_numpy(k):
    """CVODE's right-hand side and Jacobian (in place) of Robertson with rates k."""

    def rhsfn(t, y, yp):
        yp[0] = -k[0] * y[0] + k[2] * y[1] * y[2]
        yp[2] = k[1] * y[1] ** 2
        yp[1] = -yp[0] - yp[2]

    def jacfn(t, y, yp, JJ):
        JJ[:, :] = [
            [-k[0], k[2] * y[2], k[2] * y[1]],
            [k[0], -k[2] * y[2] - 2 * k[1] * y[1], -k[2] * y[1]],
            [0.0, 2 * k[1] * y[1], 0.0],
        ]

    return rhsfn, jacfn


def batch(size: int = 1024, rtol: float = 1e-6, atol: float = 1e-10, t1: float = 1e5) -> dict:
    p = problems.robertson(t1=t1)
    rng = np.random.default_rng(0)
    rates = np.asarray(p.args) * np.exp(rng.uniform(-np.log(2), np.log(2), (size, 3)))

    @jax.jit
    def solve_all(k):
        def one(ki):
            sol = sn.solve(
                p.vector_field,
                jnp.asarray(p.y0),
                0.0,
                t1,
                args=ki,
                solver="bdf",
                rtol=rtol,
                atol=atol,
                max_steps=20_000,
            )
            return sol.ys[-1], sol.stats["num_steps"]

        return jax.vmap(one)(k)

    start = time.perf_counter()
    jax.block_until_ready(solve_all(jnp.asarray(rates)))
    compile_s = time.perf_counter() - start
    ys, steps = jax.block_until_ready(solve_all(jnp.asarray(rates)))
    ours = _median_time(lambda: jax.block_until_ready(solve_all(jnp.asarray(rates))), 3)

    from sksundae.cvode import CVODE

    def cvode_all():
        out = []
        for k in rates:
            rhsfn, jacfn = _robertson_numpy(k)
            sol = CVODE(rhsfn, rtol=rtol, atol=atol, jacfn=jacfn, max_num_steps=MAX_STEPS).solve(
                np.array([0.0, t1]), np.array(p.y0)
            )
            out.append(sol.y[-1])
        return np.array(out)

    start = time.perf_counter()
    cvode_ys = cvode_all()
    cvode_s = time.perf_counter() - start
    diff = np.max(np.abs(np.asarray(ys) - cvode_ys) / (np.abs(cvode_ys) + 1e-10))
    return {
        "size": size,
        "rtol": rtol,
        "atol": atol,
        "t1": t1,
        "stiffnode_bdf_vmapped_seconds": ours,
        "compile_seconds": compile_s,
        "cvode_sequential_seconds": cvode_s,
        "speedup_vs_cvode": cvode_s / ours,
        "max_steps_in_batch": int(np.max(steps)),
        "median_steps": float(np.median(steps)),
        "max_relative_difference_vs_cvode": float(diff),
    }


def _brusselator_runner(p, linear_solver):
    @jax.jit
    def run(y0):
        sol = sn.solve(
            p.vector_field,
            y0,
            p.t0,
            p.t1,
            args=p.args,
            solver=BDF(linear_solver=linear_solver),
            rtol=1e-6,
            atol=1e-9,
            jump_ts=[1.1],
            max_steps=20_000,
        )
        return sol.ys[-1], sol.stats

    return run


def brusselator(record: dict, save, grid_sizes=(32, 64), dense_max_states: int = 4096):
    """Fills `record` grid size by grid size, calling `save()` after each solve."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for n in grid_sizes:
        p = problems.brusselator_2d(n=n)
        states = 2 * n * n
        dense_bytes = 2 * states**2 * 8
        entry = record.setdefault(f"n{n}", {})
        entry.update(
            {
                "n": n,
                "states": states,
                "dense_jacobian_and_lu_bytes": dense_bytes,
                "machine_memory_bytes": memory,
            }
        )
        finals = {}
        for linear_solver in ("lu", "gmres"):
            if linear_solver == "lu" and states > dense_max_states:
                entry["lu"] = {"skipped": f"not run above {dense_max_states} states"}
                continue
            run = _brusselator_runner(p, linear_solver)
            y0 = jnp.asarray(p.y0)
            start = time.perf_counter()
            jax.block_until_ready(run(y0))
            compile_s = time.perf_counter() - start
            start = time.perf_counter()
            y, stats = jax.block_until_ready(run(y0))
            finals[linear_solver] = np.asarray(y)
            entry[linear_solver] = {
                "seconds": time.perf_counter() - start,
                "first_call_seconds_including_compile": compile_s,
                "stats": {k: np.asarray(v).tolist() for k, v in stats.items()},
            }
            print("brusselator", n, linear_solver, entry[linear_solver]["seconds"], flush=True)
            save()
        if len(finals) == 2:
            ya, yb = finals["lu"], finals["gmres"]
            entry["gmres_vs_lu_max_relative_difference"] = float(
                np.max(np.abs(ya - yb) / (np.abs(ya) + 1e-9))
            )
            save()
    return record


def plot(results: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wp = results.get("work_precision")
    if not wp:
        return
    names = list(wp)
    fig, axes = plt.subplots(2, len(names), figsize=(5 * len(names), 8), squeeze=False)
    styles = {  # label: (format, colour), the same in both rows
        "stiffnode_bdf": ("o-", "C0"),
        "stiffnode_ndf": ("s-", "C1"),
        "stiffnode_kvaerno5": ("^--", "C2"),
        "diffrax_kvaerno5": ("v--", "C3"),
        "scipy_bdf": ("x:", "C4"),
        "scipy_lsoda": ("+:", "C5"),
        "scipy_radau": ("d:", "C6"),
        "cvode": ("*-", "k"),
    }
    for j, name in enumerate(names):
        for label, rows in wp[name]["rows"].items():
            errs = [r["error"] for r in rows]
            fmt, colour = styles.get(label, (".", None))
            axes[0, j].loglog(errs, [r["seconds"] for r in rows], fmt, color=colour, label=label)
            evals = [(r["nfev"] or 0) + (r["njev"] or 0) for r in rows]
            if all(r.get("nfev") not in (None, -1) for r in rows):
                axes[1, j].loglog(errs, evals, fmt, color=colour, label=label)
        axes[0, j].set_title(f"{name}: wall time (after compilation)")
        axes[1, j].set_title(f"{name}: f + Jacobian evaluations")
        for i in range(2):
            axes[i, j].set_xlabel("achieved error vs reference")
            axes[i, j].grid(True, which="both", alpha=0.3)
        axes[0, j].set_ylabel("seconds")
        axes[1, j].set_ylabel("evaluations")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(RESULTS) / "stiff_solvers.png", dpi=110)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", choices=["work_precision", "batch", "brusselator"])
    parser.add_argument("--plot-only", action="store_true")
    args = parser.parse_args()
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    if not args.plot_only:
        results["environment"] = environment()

        def save():
            OUT.write_text(json.dumps(results, indent=1))

        sections = {
            "work_precision": work_precision,
            "batch": batch,
            "brusselator": lambda: brusselator(results.setdefault("brusselator", {}), save),
        }
        for name in args.only or sections:
            start = time.perf_counter()
            results[name] = sections[name]()
            results[name + "_benchmark_seconds"] = time.perf_counter() - start
            save()
            print(name, "written", flush=True)
    plot(results)


if __name__ == "__main__":
    main()
