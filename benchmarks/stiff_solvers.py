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

- `single`: one solve each of Robertson (t = 1e5), HIRES, OREGO, van der Pol (mu = 1e3,
  t = 3000) and POLLU at rtol = 1e-6 (atol: `SINGLE`), by stiffnode's BDF (jitted,
  tolerances traced), diffsol's BDF (pydiffsol: the problem written in DiffSL, compiled by
  LLVM, Jacobian by diffsol's own automatic differentiation; also diffsol-jax, the same Rust
  solver called through `jax.ffi` with the problem lowered from stiffnode's jax vector
  field), CVODE (analytic numpy Jacobian), scipy LSODA (same Jacobian) and diffrax
  Kvaerno5: median wall time after compilation, compile time, function/Jacobian
  evaluations, steps, achieved error against the stored reference; ratios stiffnode/diffsol
  (wall) and stiffnode/CVODE (evaluations, wall).
- `ensembles`: 1,024 Robertson variants (rates x 2^U(-1,1), rtol 1e-6, atol 1e-10, t = 1e5)
  and 1,024 POLLU variants (k_1..k_15 x 2^U(-1,1), rtol 1e-7, atol 1e-12, t = 60, as
  `stiffnode.ensembles`): stiffnode as one compiled `jit(vmap(solve))` call (and
  `stiffnode.solve_ensemble`, where it exists), against diffsol (pydiffsol; and diffsol-jax
  under `vmap`, which runs its members one after another in one compiled call) and CVODE
  solving them one after another; agreement between the solvers over every member and, for
  four members, each solver's error against a tight CVODE solve.
- `rejected_work`: `single`'s BDF solves with their work split by whether the attempt was
  accepted (diffrax restores the solver state after a rejection, so a Jacobian refreshed in
  a rejected attempt is lost).

Run: `python benchmarks/stiff_solvers.py [--only SECTION ...] [--plot-only]
[--repeats N] [--ensemble-size N]` (sections already in the JSON are kept when others are
re-run; `--repeats` and `--ensemble-size` apply to `single` and `ensembles`).
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


# ---------------------------------------------------------------------------------------
# `single` and `ensembles`: against diffsol (Rust BDF) and CVODE, one problem at a time and
# ensembles of 1,024 variants.

SINGLE_RTOL = 1e-6
# atol: for the problems of `SETTINGS`, rtol * atol_scale as in `work_precision`; for OREGO
# and van der Pol (not in SETTINGS) the problem's standard atol (1e-6, deTestSet's).
# floor: the error measure's floor, as in SETTINGS (the atol for OREGO and van der Pol).
SINGLE = {
    "robertson": {"atol": SINGLE_RTOL * 1e-4, "floor": 1e-10, "atol_from": "SETTINGS"},
    "hires": {"atol": SINGLE_RTOL * 1e-3, "floor": 1e-8, "atol_from": "SETTINGS"},
    "orego": {"atol": 1e-6, "floor": 1e-6, "atol_from": "problem standard"},
    "van_der_pol": {"atol": 1e-6, "floor": 1e-6, "atol_from": "problem standard"},
    "pollu": {"atol": SINGLE_RTOL * 1e-3, "floor": 1e-8, "atol_from": "SETTINGS"},
}


def _anchor_versions() -> dict:
    from importlib.metadata import version

    out = {}
    for name in ["pydiffsol", "diffsol-jax", "scikit-sundae", "scipy", "numpy"]:
        try:
            out[name] = version(name)
        except Exception as e:  # noqa: BLE001 - recorded, not fatal
            out[name] = f"not installed: {e}"
    try:
        import pydiffsol as ds

        out["diffsol (Rust, in pydiffsol)"] = ds.diffsol_version()
        out["diffsl (in pydiffsol)"] = ds.diffsl_version()
        out["pydiffsol_jit_backend"] = str(ds.default_enabled_jit_backend())
    except Exception as e:  # noqa: BLE001
        out["pydiffsol_error"] = repr(e)
    try:
        import sksundae

        out["sundials"] = sksundae.SUNDIALS_VERSION
    except Exception as e:  # noqa: BLE001
        out["sundials_error"] = repr(e)
    return out


def _scaled_error(y, ref, rtol, atol):
    """The error in units of the tolerance: `max_i |y_i - ref_i| / (atol + rtol |ref_i|)`."""
    return float(np.max(np.abs(np.asarray(y) - ref) / (atol + rtol * np.abs(ref))))


def _stats(stats) -> dict:
    return {k: np.asarray(v).tolist() for k, v in stats.items()}


def _jax_row(run, args, repeats, ref, floor, rtol, atol):
    """Compile, run once for the answer, then the median of `repeats` timed runs."""
    start = time.perf_counter()
    jax.block_until_ready(run(*args))
    compile_s = time.perf_counter() - start
    y, stats = jax.block_until_ready(run(*args))
    seconds = _median_time(lambda: jax.block_until_ready(run(*args)), repeats)
    stats = _stats(stats)
    return {
        "seconds": seconds,
        "compile_seconds": compile_s,
        "error": _error(y, ref, floor),
        "scaled_error": _scaled_error(y, ref, rtol, atol),
        "nfev": stats.get("num_vf_evals"),
        "njev": stats.get("num_jac_evals"),
        "steps": stats.get("num_steps"),
        "stats": stats,
        "y": np.asarray(y).tolist(),
    }


def _diffsol_jax_problem(name, p):
    """diffsol-jax's `ODEProblem` (the vector field lowered to DiffSL, Cranelift) and params.

    Van der Pol is written with `y1 * y1`: diffsol-jax 0.0.2 lowers stiffnode's `y1 ** 2`
    to DiffSL `pow(y0, 2.0)`, and with that its BDF stops with "Step size is too small at
    time = 807.06" (rtol 1e-6, atol 1e-6 or 1e-9, h0 1 or 1e-3); the product solves.
    """
    from diffsol_jax import ODEProblem

    if name == "van_der_pol":

        def rhs(t, y, q):
            return (y[1], q[0] * (1.0 - y[0] * y[0]) * y[1] - y[0])

        params = jnp.atleast_1d(jnp.asarray(p.args))
    elif p.args is None:

        def rhs(t, y, q):
            return p.vector_field(t, y, None)

        params = jnp.zeros(1)  # diffsol-jax needs a parameter vector; unused
    else:
        rhs, params = p.vector_field, jnp.asarray(p.args)
    return ODEProblem(rhs, y0=jnp.asarray(p.y0), params=params), params


def _single_problem(name, repeats) -> dict:
    from _diffsl import PARAMS
    from _diffsl import ode as diffsol_ode

    setting = SINGLE[name]
    p = problems.PROBLEMS[name]()
    rtol, atol, floor = SINGLE_RTOL, setting["atol"], setting["floor"]
    reference = REFERENCES[name]
    assert reference["t1"] == p.t1, (name, reference["t1"], p.t1)
    ref = np.asarray(reference["y"])
    tols = (jnp.asarray(rtol), jnp.asarray(atol))
    rows = {}

    def guarded(label, fn):
        try:
            rows[label] = fn()
        except Exception as e:  # noqa: BLE001 - a failing anchor is recorded, not fatal
            rows[label] = {"failed": f"{type(e).__name__}: {e}"[:500]}
        print(
            name,
            label,
            {
                k: v
                for k, v in rows[label].items()
                if k in ("seconds", "error", "nfev", "njev", "steps", "failed")
            },
            flush=True,
        )

    guarded(
        "stiffnode_bdf",
        lambda: _jax_row(_jax_solver(p, "bdf"), tols, repeats, ref, floor, rtol, atol),
    )

    def diffsol():
        start = time.perf_counter()
        solver = diffsol_ode(name, rtol, atol)
        solver.t0 = p.t0
        build_s = time.perf_counter() - start
        params, t_eval = PARAMS[name](p), np.array([p.t0, p.t1])
        y = np.asarray(solver.solve_dense(params, t_eval).ys)[:, -1]
        seconds = _median_time(lambda: solver.solve_dense(params, t_eval), repeats)
        steps = len(solver.solve(params, p.t1).ts) - 1  # `solve` returns every step
        return {
            "seconds": seconds,
            "compile_seconds": build_s,
            "error": _error(y, ref, floor),
            "scaled_error": _scaled_error(y, ref, rtol, atol),
            "nfev": None,  # pydiffsol 0.6.2 exposes no evaluation counters
            "njev": None,
            "steps": steps,
            "y": y.tolist(),
            "how": "pydiffsol Ode(DiffSL, nalgebra_dense, bdf).solve_dense(params, [t0, t1])",
        }

    guarded("diffsol", diffsol)

    def diffsol_jax():
        start = time.perf_counter()
        prob, params = _diffsol_jax_problem(name, p)
        t_span = jnp.asarray([p.t0, p.t1])

        @jax.jit
        def run(q):
            _, ys = prob.solve(q, t_span, ode_solver="bdf", rtol=rtol, atol=atol)
            return ys[-1], {}

        jax.block_until_ready(run(params))
        compile_s = time.perf_counter() - start
        row = _jax_row(run, (params,), repeats, ref, floor, rtol, atol)
        return row | {"compile_seconds": compile_s, "nfev": None, "njev": None}

    guarded("diffsol_jax", diffsol_jax)

    def cvode():
        run = _cvode(p, rtol, atol)
        sol = run()
        return {
            "seconds": _median_time(run, repeats),
            "error": _error(sol.y[-1], ref, floor),
            "scaled_error": _scaled_error(sol.y[-1], ref, rtol, atol),
            "nfev": int(sol.nfev),
            "njev": int(sol.njev),
            "steps": len(sol.t) - 1,
            "y": np.asarray(sol.y[-1]).tolist(),
        }

    guarded("cvode", cvode)

    def lsoda():
        rhs, jac = problems.rhs_numpy(p), problems.jac_numpy(p)

        def run():
            return solve_ivp(rhs, (p.t0, p.t1), p.y0, method="LSODA", rtol=rtol, atol=atol, jac=jac)

        sol = run()
        return {
            "seconds": _median_time(run, max(1, repeats // 2)),
            "error": _error(sol.y[:, -1], ref, floor),
            "scaled_error": _scaled_error(sol.y[:, -1], ref, rtol, atol),
            "nfev": int(sol.nfev),
            "njev": int(sol.njev),
            "nlu": int(sol.nlu),
            "steps": len(sol.t) - 1,
            "success": bool(sol.success),
            "y": sol.y[:, -1].tolist(),
        }

    guarded("scipy_lsoda", lsoda)
    guarded(
        "diffrax_kvaerno5",
        lambda: (
            _jax_row(_diffrax_kvaerno5(p), tols, repeats, ref, floor, rtol, atol)
            | {"nfev": None, "njev": None}
        ),
    )

    def ratio(a, b, key):
        x, y = rows[a].get(key), rows[b].get(key)
        return x / y if x is not None and y else None

    ours = "stiffnode_bdf"
    ratios = {
        "seconds_vs_diffsol": ratio(ours, "diffsol", "seconds"),
        "seconds_vs_diffsol_jax": ratio(ours, "diffsol_jax", "seconds"),
        "seconds_vs_cvode": ratio(ours, "cvode", "seconds"),
        "seconds_vs_scipy_lsoda": ratio(ours, "scipy_lsoda", "seconds"),
        "seconds_vs_diffrax_kvaerno5": ratio(ours, "diffrax_kvaerno5", "seconds"),
        "nfev_vs_cvode": ratio(ours, "cvode", "nfev"),
        "njev_vs_cvode": ratio(ours, "cvode", "njev"),
        "steps_vs_cvode": ratio(ours, "cvode", "steps"),
        "steps_vs_diffsol": ratio(ours, "diffsol", "steps"),
        "error_vs_cvode": ratio(ours, "cvode", "error"),
        "error_vs_diffsol": ratio(ours, "diffsol", "error"),
    }
    targets = {
        "seconds_vs_diffsol <= 2": None
        if ratios["seconds_vs_diffsol"] is None
        else ratios["seconds_vs_diffsol"] <= 2,
        "nfev_vs_cvode <= 1.5": None
        if ratios["nfev_vs_cvode"] is None
        else ratios["nfev_vs_cvode"] <= 1.5,
        "njev_vs_cvode <= 1.5": None
        if ratios["njev_vs_cvode"] is None
        else ratios["njev_vs_cvode"] <= 1.5,
    }
    return {
        "rtol": rtol,
        "atol": atol,
        "atol_from": setting["atol_from"],
        "floor": floor,
        "t1": p.t1,
        "reference": reference["method"],
        "rows": rows,
        "stiffnode_bdf_over": ratios,
        "targets_met": targets,
    }


def single(record: dict, save, repeats: int = 7, names=None) -> dict:
    """Fills `record` problem by problem, calling `save()` after each."""
    record.update(
        {
            "repeats": repeats,
            "rtol": SINGLE_RTOL,
            "load_average_at_start": list(os.getloadavg()),
            "anchor_versions": _anchor_versions(),
            "error_measure": "max_i |y_i - ref_i| / (|ref_i| + floor) against "
            "tests/data/stiff_references.json (tight Radau); scaled_error: "
            "max_i |y_i - ref_i| / (atol + rtol |ref_i|)",
            "notes": "seconds: median of `repeats` runs after compilation (scipy LSODA: "
            "repeats // 2); diffsol: pydiffsol solve_dense to [t0, t1] (steps from one "
            "`solve`, which returns every step), compile_seconds is its DiffSL JIT build; "
            "pydiffsol exposes no f/Jacobian evaluation counts. CVODE and LSODA get the "
            "analytic numpy Jacobian; stiffnode, diffsol and diffrax their own (jax AD, "
            "diffsol's AD).",
        }
    )
    problems_ = record.setdefault("problems", {})
    for name in names or SINGLE:
        problems_[name] = _single_problem(name, repeats)
        save()
    record["load_average_at_end"] = list(os.getloadavg())
    return record


def rejected_work() -> dict:
    """BDF's work on `single`'s problems split by whether the attempt was accepted: diffrax
    restores the solver state of the last accepted step after a rejection, so a Jacobian or
    factorisation made during a rejected attempt is lost (CVODE keeps it)."""
    import diffrax

    from stiffnode.solvers import BDF, SolverStepController
    from stiffnode.solvers.self_controlled import STAT_KEYS

    class Split(SolverStepController):
        """Also sums the work of the attempts it rejects (state: the stats and that sum)."""

        def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
            tnext, stats = super().init(terms, t0, t1, y0, dt0, args, func, error_order)
            return tnext, (stats, jnp.zeros(len(STAT_KEYS), jnp.int32))

        def adapt_step_size(self, t0, t1, y0, y1, args, y_error, error_order, state):
            stats, rejected = state
            out = super().adapt_step_size(t0, t1, y0, y1, args, y_error, error_order, stats)
            counts = jnp.round(y_error.counts).astype(jnp.int32)
            rejected = rejected + jnp.where(out[0], 0, counts)
            return *out[:4], (out[4], rejected), out[5]

    out = {}
    for name, setting in SINGLE.items():
        p = problems.PROBLEMS[name]()
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(p.vector_field), BDF(), p.t0, p.t1, None, jnp.asarray(p.y0),
            args=p.args, stepsize_controller=Split(SINGLE_RTOL, setting["atol"]),
            saveat=diffrax.SaveAt(t1=True, controller_state=True), max_steps=MAX_STEPS,
        )  # fmt: skip
        stats, rejected = sol.controller_state
        total = dict(zip(STAT_KEYS, np.asarray(stats.counts).tolist(), strict=True))
        lost = dict(zip(STAT_KEYS, np.asarray(rejected).tolist(), strict=True))
        out[name] = {
            "attempts": int(stats.num_attempts),
            "rejected_attempts": int(sol.stats["num_rejected_steps"]),
            "total": total,
            "in_rejected_attempts": lost,
        }
        print(name, "rejected work", out[name], flush=True)
    return out


def _ensemble_settings(size: int) -> dict:
    from stiffnode import ensembles as ens

    rng = np.random.default_rng(0)  # as in `batch`
    rob = problems.robertson(t1=1e5)
    rates = np.asarray(rob.args) * np.exp(rng.uniform(-np.log(2), np.log(2), (size, 3)))
    pol = problems.pollu()
    u = np.random.default_rng(0).uniform(-1.0, 1.0, (size, len(ens.PERTURBED_RATES)))
    k = np.tile(np.asarray(pol.args), (size, 1))
    k[:, list(ens.PERTURBED_RATES)] *= 2.0**u
    return {
        "robertson": {"problem": rob, "args": rates, "rtol": 1e-6, "atol": 1e-10, "floor": 1e-10},
        "pollu": {"problem": pol, "args": k, "rtol": ens.RTOL, "atol": ens.ATOL, "floor": 1e-10},
    }


def _cvode_member(p, k, rtol, atol):
    from sksundae.cvode import CVODE

    def rhsfn(t, y, yp):
        yp[:] = p.numpy_rhs(t, y, k)

    def jacfn(t, y, yp, JJ):
        JJ[:, :] = p.numpy_jac(t, y, k)

    if p.name == "robertson":
        rhsfn, jacfn = _robertson_numpy(k)  # in place, as `batch`
    return CVODE(rhsfn, rtol=rtol, atol=atol, jacfn=jacfn, max_num_steps=MAX_STEPS).solve(
        np.array([p.t0, p.t1]), np.array(p.y0, float)
    )


def _differences(a, b, rtol, atol, floor) -> dict:
    """Between two `(members, n)` arrays of final states, b taken as the yardstick."""
    a, b = np.asarray(a), np.asarray(b)
    scaled = np.max(np.abs(a - b) / (atol + rtol * np.abs(b)), axis=1)
    relative = np.max(np.abs(a - b) / (np.abs(b) + floor), axis=1)
    return {
        "max_scaled": float(scaled.max()),
        "median_scaled": float(np.median(scaled)),
        "max_relative": float(relative.max()),
        "median_relative": float(np.median(relative)),
    }


def _ensemble(name, s, repeats) -> dict:
    from _diffsl import ode as diffsol_ode

    p, args, rtol, atol, floor = s["problem"], s["args"], s["rtol"], s["atol"], s["floor"]
    size = len(args)
    y0 = jnp.asarray(p.y0)
    out = {"size": size, "rtol": rtol, "atol": atol, "t1": p.t1}
    finals = {}

    def guarded(label, fn):
        try:
            out[label] = fn()
        except Exception as e:  # noqa: BLE001
            out[label] = {"failed": f"{type(e).__name__}: {e}"[:500]}
        print(
            name,
            "ensemble",
            label,
            {k: v for k, v in out[label].items() if k in ("seconds", "compile_seconds", "failed")},
            flush=True,
        )

    def timed(solve_all, *inputs):
        """(compile s, median s after compilation, final states, stats as numpy)."""
        start = time.perf_counter()
        jax.block_until_ready(solve_all(*inputs))
        compile_s = time.perf_counter() - start
        ys, stats = jax.block_until_ready(solve_all(*inputs))
        seconds = _median_time(lambda: jax.block_until_ready(solve_all(*inputs)), repeats)
        return compile_s, seconds, np.asarray(ys), {key: np.asarray(v) for key, v in stats.items()}

    # The same BDF solve for both stiffnode entry points.
    solve_kwargs = dict(solver="bdf", rtol=rtol, atol=atol, max_steps=20_000)

    def stiffnode_vmap():
        @jax.jit
        def solve_all(k):
            def one(ki):
                sol = sn.solve(p.vector_field, y0, p.t0, p.t1, args=ki, **solve_kwargs)
                return sol.ys[-1], sol.stats

            return jax.vmap(one)(k)

        compile_s, seconds, finals["stiffnode_vmap"], stats = timed(solve_all, jnp.asarray(args))
        return {
            "seconds": seconds,
            "compile_seconds": compile_s,
            "how": "jax.jit(jax.vmap(one)), one compiled call",
            "steps_max": int(stats["num_steps"].max()),
            "steps_median": float(np.median(stats["num_steps"])),
            "nfev_total": int(stats["num_vf_evals"].sum()) if "num_vf_evals" in stats else None,
            "njev_total": int(stats["num_jac_evals"].sum()) if "num_jac_evals" in stats else None,
        }

    guarded("stiffnode_vmap", stiffnode_vmap)

    def stiffnode_solve_ensemble():
        @jax.jit
        def solve_all(y0s, k):
            sol = sn.solve_ensemble(p.vector_field, y0s, p.t0, p.t1, args=k, **solve_kwargs)
            return sol.ys[:, -1], sol.stats

        y0s, k = jnp.tile(y0, (size, 1)), jnp.asarray(args)
        compile_s, seconds, finals["stiffnode_solve_ensemble"], stats = timed(solve_all, y0s, k)
        steps = stats["num_steps"]
        return {
            "seconds": seconds,
            "compile_seconds": compile_s,
            "how": "jax.jit(stiffnode.solve_ensemble(...)) with its defaults (chunk_size 1 "
            f"on CPU, 16 on GPU/TPU; devices {[str(d) for d in jax.local_devices()]})",
            "steps_max": int(steps.max()),
            "steps_median": float(np.median(steps)),
        }

    guarded("stiffnode_solve_ensemble", stiffnode_solve_ensemble)

    def diffsol():
        start = time.perf_counter()
        solver = diffsol_ode(p.name, rtol, atol)
        solver.t0 = p.t0
        build_s = time.perf_counter() - start
        t_eval = np.array([p.t0, p.t1])

        def run():
            return np.array([np.asarray(solver.solve_dense(k, t_eval).ys)[:, -1] for k in args])

        finals["diffsol"] = run()
        steps = np.array([len(solver.solve(k, p.t1).ts) - 1 for k in args])
        return {
            "seconds": _median_time(run, repeats),
            "compile_seconds": build_s,
            "how": "pydiffsol, a Python loop of solve_dense(k_i, [t0, t1]), one compiled Ode",
            "steps_max": int(steps.max()),
            "steps_median": float(np.median(steps)),
        }

    guarded("diffsol_sequential", diffsol)

    def diffsol_jax():
        start = time.perf_counter()
        prob, _ = _diffsol_jax_problem(p.name, p)
        t_span = jnp.asarray([p.t0, p.t1])

        @jax.jit
        def solve_all(k):
            return jax.vmap(
                lambda q: prob.solve(q, t_span, ode_solver="bdf", rtol=rtol, atol=atol)[1][-1]
            )(k)

        k = jnp.asarray(args)
        jax.block_until_ready(solve_all(k))
        compile_s = time.perf_counter() - start
        finals["diffsol_jax"] = np.asarray(solve_all(k))
        return {
            "seconds": _median_time(lambda: jax.block_until_ready(solve_all(k)), repeats),
            "compile_seconds": compile_s,
            "how": "diffsol-jax under jax.jit(jax.vmap(...)): vmap_method='sequential', the "
            "members one after another inside one compiled call",
        }

    guarded("diffsol_jax_sequential", diffsol_jax)

    def cvode():
        start = time.perf_counter()
        sols = [_cvode_member(p, k, rtol, atol) for k in args]
        seconds = time.perf_counter() - start
        finals["cvode"] = np.array([sol.y[-1] for sol in sols])
        steps = np.array([len(sol.t) - 1 for sol in sols])
        return {
            "seconds": seconds,
            "how": "scikit-sundae CVODE, a Python loop, one solver object per member (as "
            "`batch`), analytic numpy Jacobian; timed once",
            "steps_max": int(steps.max()),
            "steps_median": float(np.median(steps)),
            "nfev_total": int(sum(sol.nfev for sol in sols)),
            "njev_total": int(sum(sol.njev for sol in sols)),
        }

    guarded("cvode_sequential", cvode)

    def seconds(label):
        return out[label].get("seconds")

    def ratio(a, b):
        x, y = seconds(a), seconds(b)
        return x / y if x is not None and y else None

    out["ratios"] = {
        "stiffnode_vmap_over_diffsol_sequential": ratio("stiffnode_vmap", "diffsol_sequential"),
        "stiffnode_vmap_over_diffsol_jax_sequential": ratio(
            "stiffnode_vmap", "diffsol_jax_sequential"
        ),
        "cvode_sequential_over_stiffnode_vmap": ratio("cvode_sequential", "stiffnode_vmap"),
        "stiffnode_solve_ensemble_over_diffsol_sequential": ratio(
            "stiffnode_solve_ensemble", "diffsol_sequential"
        ),
        "cvode_sequential_over_stiffnode_solve_ensemble": ratio(
            "cvode_sequential", "stiffnode_solve_ensemble"
        ),
    }
    r = out["ratios"]
    best = [
        x
        for x in (
            r["stiffnode_vmap_over_diffsol_sequential"],
            r["stiffnode_solve_ensemble_over_diffsol_sequential"],
        )
        if x is not None
    ]
    speedups = [
        x
        for x in (
            r["cvode_sequential_over_stiffnode_vmap"],
            r["cvode_sequential_over_stiffnode_solve_ensemble"],
        )
        if x is not None
    ]
    out["targets_met"] = {
        "stiffnode <= diffsol sequential (best stiffnode way)": min(best) <= 1 if best else None,
        "stiffnode >= 10x faster than CVODE sequential (best stiffnode way)": max(speedups) >= 10
        if speedups
        else None,
    }
    # Agreement: every member against CVODE (the yardstick), and four members against a
    # tight CVODE solve (rtol 1e-11, atol / 1e4) for each solver's own error.
    if "cvode" in finals:
        out["agreement_vs_cvode"] = {
            label: _differences(ys, finals["cvode"], rtol, atol, floor)
            for label, ys in finals.items()
            if label != "cvode"
        }
    members = sorted({0, 1, size // 2, size - 1})
    tight = np.array([_cvode_member(p, args[i], 1e-11, atol * 1e-4).y[-1] for i in members])
    out["members_vs_tight_cvode"] = {
        "members": members,
        "tight": "CVODE rtol 1e-11, atol = atol * 1e-4",
        "scaled_error": {
            label: [_scaled_error(ys[i], tight[j], rtol, atol) for j, i in enumerate(members)]
            for label, ys in finals.items()
        },
    }
    return out


def ensembles(record: dict, save, size: int = 1024, repeats: int = 3, names=None) -> dict:
    """Fills `record` problem by problem, calling `save()` after each."""
    record.update(
        {
            "size": size,
            "repeats": repeats,
            "load_average_at_start": list(os.getloadavg()),
            "anchor_versions": _anchor_versions(),
            "notes": "seconds: total wall time for the whole ensemble after compilation, "
            "median of `repeats` (CVODE: one run); scaled differences: "
            "max_i |a_i - b_i| / (atol + rtol |b_i|) per member.",
        }
    )
    settings = _ensemble_settings(size)
    for name in names or settings:
        record[name] = _ensemble(name, settings[name], repeats)
        save()
    record["load_average_at_end"] = list(os.getloadavg())
    return record


SINGLE_STYLES = {  # label: colour, in the bar charts of `single` and `ensembles`
    "stiffnode_bdf": "C0",
    "stiffnode_vmap": "C0",
    "stiffnode_solve_ensemble": "C9",
    "diffsol": "C7",
    "diffsol_sequential": "C7",
    "diffsol_jax": "C8",
    "diffsol_jax_sequential": "C8",
    "cvode": "k",
    "cvode_sequential": "k",
    "scipy_lsoda": "C5",
    "diffrax_kvaerno5": "C3",
}


def _bars(ax, groups: list[str], series: dict[str, list], log=True, values=False):
    """Grouped bars: one group per entry of `groups`, one bar per series (None: no bar);
    `values`: the value written above each bar. Headroom above the bars for the legend."""
    width = 0.8 / max(1, len(series))
    top = []
    for i, (label, heights) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        pairs = [(x, v) for x, v in zip(xs, heights, strict=True) if v is not None]
        if pairs:
            bars = ax.bar(
                *zip(*pairs, strict=True), width, label=label, color=SINGLE_STYLES.get(label)
            )
            top += [v for _, v in pairs]
            if values:
                ax.bar_label(bars, fmt="%.2g", fontsize=6)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    if log:
        ax.set_yscale("log")
        if top:
            ax.set_ylim(top=max(top) * 30)
    ax.grid(True, axis="y", which="both", alpha=0.3)


def _plot_single(ax_wall, ax_ratio, single_):
    probs = single_.get("problems", {})
    names = list(probs)
    labels = ["stiffnode_bdf", "diffsol", "diffsol_jax", "cvode", "scipy_lsoda", "diffrax_kvaerno5"]
    _bars(
        ax_wall,
        names,
        {lab: [probs[n]["rows"].get(lab, {}).get("seconds") for n in names] for lab in labels},
    )
    ax_wall.set_ylabel("seconds (median, after compilation)")
    ax_wall.set_title(f"single solves, rtol {single_.get('rtol')}: wall time")
    ax_wall.legend(fontsize=7, ncol=3)
    ratios = {
        "wall vs diffsol (target <= 2)": "seconds_vs_diffsol",
        "f-evals vs CVODE (target <= 1.5)": "nfev_vs_cvode",
        "Jacobian evals vs CVODE (target <= 1.5)": "njev_vs_cvode",
        "wall vs CVODE": "seconds_vs_cvode",
    }
    _bars(
        ax_ratio,
        names,
        {
            lab: [probs[n]["stiffnode_bdf_over"].get(key) for n in names]
            for lab, key in ratios.items()
        },
        values=True,
    )
    ax_ratio.axhline(2.0, color="C0", ls="--", lw=1)
    ax_ratio.axhline(1.5, color="C1", ls=":", lw=1)
    ax_ratio.axhline(1.0, color="k", lw=0.8)
    ax_ratio.set_ylabel("stiffnode BDF / anchor")
    ax_ratio.set_title("single solves: stiffnode BDF over the anchors")
    ax_ratio.legend(fontsize=7, ncol=2)


def _plot_ensembles(ax, ens):
    names = [n for n in ("robertson", "pollu") if n in ens]
    labels = [
        "stiffnode_vmap",
        "stiffnode_solve_ensemble",
        "diffsol_sequential",
        "diffsol_jax_sequential",
        "cvode_sequential",
    ]
    _bars(
        ax,
        names,
        {lab: [ens[n].get(lab, {}).get("seconds") for n in names] for lab in labels},
        values=True,
    )
    ax.set_ylabel("seconds for the whole ensemble")
    ax.set_title(f"ensembles of {ens.get('size')} variants: total wall time")
    ax.legend(fontsize=7, ncol=2)


def plot(results: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wp = results.get("work_precision")
    single_, ens = results.get("single"), results.get("ensembles")
    if not (wp or single_ or ens):
        return
    names = list(wp) if wp else []
    extra = bool(single_ or ens)
    rows, cols = (2 if wp else 0) + extra, max(len(names), 3 if extra else 1)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
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
        for label, rows_ in wp[name]["rows"].items():
            errs = [r["error"] for r in rows_]
            fmt, colour = styles.get(label, (".", None))
            axes[0, j].loglog(errs, [r["seconds"] for r in rows_], fmt, color=colour, label=label)
            evals = [(r["nfev"] or 0) + (r["njev"] or 0) for r in rows_]
            if all(r.get("nfev") not in (None, -1) for r in rows_):
                axes[1, j].loglog(errs, evals, fmt, color=colour, label=label)
        axes[0, j].set_title(f"{name}: wall time (after compilation)")
        axes[1, j].set_title(f"{name}: f + Jacobian evaluations")
        for i in range(2):
            axes[i, j].set_xlabel("achieved error vs reference")
            axes[i, j].grid(True, which="both", alpha=0.3)
        axes[0, j].set_ylabel("seconds")
        axes[1, j].set_ylabel("evaluations")
    if wp:
        axes[0, 0].legend(fontsize=8)
    if extra:
        last = axes[rows - 1]
        for ax in last:
            ax.set_visible(False)
        if single_ and single_.get("problems"):
            last[0].set_visible(True)
            last[1].set_visible(True)
            _plot_single(last[0], last[1], single_)
        if ens and any(n in ens for n in ("robertson", "pollu")):
            last[2].set_visible(True)
            _plot_ensembles(last[2], ens)
    fig.tight_layout()
    fig.savefig(Path(RESULTS) / "stiff_solvers.png", dpi=110)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--only",
        nargs="*",
        choices=["work_precision", "batch", "brusselator", "single", "ensembles", "rejected_work"],
    )
    parser.add_argument("--plot-only", action="store_true")
    parser.add_argument(
        "--repeats", type=int, default=None, help="single: 7, ensembles: 3 unless given"
    )
    parser.add_argument("--ensemble-size", type=int, default=1024)
    parser.add_argument(
        "--problems", nargs="*", default=None, help="a subset of single/ensembles' problems"
    )
    args = parser.parse_args()
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    if not args.plot_only:
        results["environment"] = environment()
        results["environment"]["load_average_at_start"] = list(os.getloadavg())

        def save():
            OUT.write_text(json.dumps(results, indent=1))

        def fresh(name):
            results[name] = {}
            return results[name]

        sections = {
            "work_precision": work_precision,
            "batch": batch,
            "brusselator": lambda: brusselator(results.setdefault("brusselator", {}), save),
            "single": lambda: single(
                fresh("single"), save, repeats=args.repeats or 7, names=args.problems
            ),
            "ensembles": lambda: ensembles(
                fresh("ensembles"),
                save,
                size=args.ensemble_size,
                repeats=args.repeats or 3,
                names=args.problems,
            ),
            "rejected_work": rejected_work,
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
