"""Independent reference solutions for `stiffnode.problems`: scipy Radau and SUNDIALS CVODE.

Run `python tests/data/make_stiff_references.py` (a few minutes); it rewrites
`tests/data/stiff_references.json`: problem name -> {"t1", "y" (Radau), "method", "rtol",
"atol", "y_cvode", "cvode_rtol", "cvode_atol", "max_rel_diff_radau_vs_cvode", "published",
"max_rel_diff_vs_published", "diff_atol", "seconds", "spread"}. "spread" holds the scaled
final-state errors of scipy's BDF, LSODA and Radau and of CVODE at the problem's standard
tolerances (`python tests/data/make_stiff_references.py --spread` recomputes only these).
Differences are `max_i |y_i - p_i| / (|p_i| + diff_atol)`, `diff_atol` the problem's standard
`atol` (E5's `y1` is 1e-290 and its published `y4` is 0, so a pure relative difference is
meaningless there).
Only the problems' hand-written numpy right-hand sides and Jacobians are used, no jax solver.
"""

import json
import pathlib
import sys
import time

import numpy as np
from scipy.integrate import solve_ivp

from stiffnode import problems as P

OUT = pathlib.Path(__file__).with_name("stiff_references.json")

# name -> (problem, Radau (rtol, atol), CVODE (rtol, atol)); atol below every state's scale.
CASES = {
    "robertson": (P.robertson(), (1e-12, 1e-22), (1e-12, 1e-22)),
    "robertson_1e11": (P.robertson(t1=1e11), (1e-12, 1e-24), (1e-12, 1e-24)),
    "van_der_pol": (P.van_der_pol(), (1e-12, 1e-12), (1e-12, 1e-12)),
    "van_der_pol_t2000": (P.van_der_pol(t1=2000.0), (1e-12, 1e-12), (1e-12, 1e-12)),
    "hires": (P.hires(), (1e-12, 1e-16), (1e-12, 1e-16)),
    "orego": (P.orego(), (1e-12, 1e-12), (1e-12, 1e-12)),
    "e5": (P.e5(), (1e-12, 1e-32), (1e-12, 1e-32)),
    "pollu": (P.pollu(), (1e-12, 1e-24), (1e-12, 1e-24)),
    "brusselator_2d_n8": (P.brusselator_2d(8), (1e-12, 1e-14), (1e-12, 1e-14)),
}

NOTES = {
    "e5": "y1 and y4 are 0 to double precision. y2 - y3 - y4 = 0 is conserved, yet the published "
    "y2 - y3 = 1.28e-25 (Radau here 7e-26, CVODE 6e-25): the drift float64 solvers accumulate "
    "while the states are ~1e-10, so y2, y3 agree only to ~3e-3 singly; their mean agrees to "
    "~1e-7 (Radau), ~5e-6 (CVODE).",
    "robertson_1e11": "published: IVPtestset ROBER at t = 1e11.",
    "van_der_pol_t2000": "published: IVPtestset VDPOL (scaled, eps = 1e-6, t = 2) mapped back to "
    "mu = 1000, t = 2000 (y2 divided by mu), as in deTestSet.",
    "brusselator_2d_n8": "integrated in two pieces, [0, 1.1] and [1.1, 11.5], across the forcing's "
    "jump.",
}


def rel_diff(y, p, atol):
    return float(np.max(np.abs(np.asarray(y) - p) / (np.abs(p) + atol)))


def radau(problem, rtol, atol):
    f, jac = P.rhs_numpy(problem), P.jac_numpy(problem)
    t_span = (problem.t0, problem.t1)
    if problem.name == "brusselator_2d":  # integrate across the forcing's jump in two pieces
        from stiffnode.problems._brusselator import FORCING_TIME

        mid = solve_ivp(f, (problem.t0, FORCING_TIME), problem.y0, "Radau", rtol=rtol, atol=atol,
                        jac=jac)  # fmt: skip
        y_mid, t_span = mid.y[:, -1], (FORCING_TIME, problem.t1)
    else:
        y_mid = problem.y0
    sol = solve_ivp(f, t_span, y_mid, method="Radau", rtol=rtol, atol=atol, jac=jac)
    if not sol.success:
        raise RuntimeError(f"Radau failed on {problem.name}: {sol.message}")
    return sol.y[:, -1]


def cvode(problem, rtol, atol):
    try:
        from sksundae.cvode import CVODE
    except ImportError:
        return None
    f, jac = P.rhs_numpy(problem), P.jac_numpy(problem)

    def rhsfn(t, y, yp):
        yp[:] = f(t, y)

    def jacfn(t, y, yp, jj):
        j = jac(t, y)
        jj[:, :] = j.toarray() if hasattr(j, "toarray") else j

    times = [problem.t0, problem.t1]
    if problem.name == "brusselator_2d":
        from stiffnode.problems._brusselator import FORCING_TIME

        times = [problem.t0, FORCING_TIME, problem.t1]
    y = problem.y0
    for a, b in zip(times[:-1], times[1:], strict=True):
        solver = CVODE(rhsfn, jacfn=jacfn, rtol=rtol, atol=atol, max_num_steps=10**7,
                       max_step=0.0, linsolver="dense")  # fmt: skip
        sol = solver.solve(np.array([a, b]), y)
        if not sol.success:
            raise RuntimeError(f"CVODE failed on {problem.name}: {sol.message}")
        y = np.asarray(sol.y[-1])
    return y


def scaled_error(y, ref, problem):
    """Error in units of the problem's standard tolerance, as the tests measure it:
    `max_i |y_i - ref_i| / (atol + rtol |ref_i|)`."""
    return float(np.max(np.abs(np.asarray(y) - ref) / (problem.atol + problem.rtol * np.abs(ref))))


def spread(problem, ref):
    """Scaled final-state errors of independent solvers at the problem's standard rtol/atol:
    the spread that bounds the tests of stiffnode's solvers (never stiffnode itself)."""
    f, jac = P.rhs_numpy(problem), P.jac_numpy(problem)
    out = {}
    for method in ("BDF", "LSODA", "Radau"):
        if problem.name == "brusselator_2d":
            continue  # the forcing's jump needs the two-piece integration (see radau/cvode)
        sol = solve_ivp(f, (problem.t0, problem.t1), problem.y0, method=method,
                        rtol=problem.rtol, atol=problem.atol, jac=jac)  # fmt: skip
        out[f"scipy_{method.lower()}"] = scaled_error(sol.y[:, -1], ref, problem) if (
            sol.success
        ) else None
    y_cv = cvode(problem, problem.rtol, problem.atol)
    if y_cv is not None:
        out["cvode"] = scaled_error(y_cv, ref, problem)
    return {"rtol": problem.rtol, "atol": problem.atol, "scaled_error": out}


def main():
    args = sys.argv[1:]
    spread_only = "--spread" in args
    only = set(args) - {"--spread"}
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    if spread_only:
        for key, (problem, _, _) in CASES.items():
            if only and key not in only:
                continue
            data[key]["spread"] = spread(problem, np.asarray(data[key]["y"]))
            print(key, data[key]["spread"])
            OUT.write_text(json.dumps(data, indent=1) + "\n")
        return
    for key, (problem, (rtol, atol), (c_rtol, c_atol)) in CASES.items():
        if only and key not in only:
            continue
        start = time.perf_counter()
        y = radau(problem, rtol, atol)
        y_cv = cvode(problem, c_rtol, c_atol)
        seconds = time.perf_counter() - start
        pub = problem.reference
        entry = {
            "t1": problem.t1,
            "y": y.tolist(),
            "method": "scipy.integrate.solve_ivp Radau, analytic Jacobian",
            "rtol": rtol,
            "atol": atol,
            "y_cvode": None if y_cv is None else y_cv.tolist(),
            "cvode_rtol": c_rtol,
            "cvode_atol": c_atol,
            "max_rel_diff_radau_vs_cvode": (
                None if y_cv is None else rel_diff(y, y_cv, problem.atol)
            ),
            "published": None if pub is None else pub.tolist(),
            "max_rel_diff_vs_published": None if pub is None else rel_diff(y, pub, problem.atol),
            "max_rel_diff_cvode_vs_published": (
                None if pub is None or y_cv is None else rel_diff(y_cv, pub, problem.atol)
            ),
            "diff_atol": problem.atol,
            "seconds": round(seconds, 1),
        }
        if key in NOTES:
            entry["note"] = NOTES[key]
        entry["spread"] = spread(problem, y)
        data[key] = entry
        print(key, {k: v for k, v in entry.items() if k.startswith(("max", "seconds"))})
        OUT.write_text(json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
