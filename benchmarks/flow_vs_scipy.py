"""The seed's setting at growing size: stiffnode's BDF against scipy on the same gradient flow.

The seed solved `dtheta/dt = -grad L(theta)` with scipy's stiff solvers, which form the
Jacobian `-H` by finite differences (one gradient per parameter) and factorise it densely.
stiffnode's BDF uses Hessian-vector products in a Newton-Krylov iteration instead. This
benchmark measures, in one run on this machine, how the wall-time ratio between the two
grows with the parameter count `n`:

- task: the digits MLP `64 -> h -> 10` (tanh, full batch, cross-entropy) of `stiffnode flow`,
  `h` in `HIDDEN` (n = 1,210 .. 9,610), the same start for every solver;
- the flow from t = 0 to `FLOW_TIME` with the seed's tolerances (rtol 1e-6, atol 1e-8);
- scipy `solve_ivp` LSODA and BDF (the seed's) and `ode` vode (its reviewer's advice), with
  finite-difference Jacobians, each given `BUDGET` wall seconds. A run that does not finish
  is compared with stiffnode's BDF timed to the flow time it reached (scipy's time until
  the step that got there was accepted); stiffnode's time is after compilation. Each scipy
  entry records its own budget and the stiffnode time it was compared with, so a size can
  be rerun for one method with a longer budget (`--methods LSODA --budget 5400`).

Each size is written to `benchmarks/results/flow_vs_scipy.json` as soon as it finishes, and
a rerun resumes (sizes and methods already there are kept). The plot is
`flow_vs_scipy.png`. Run: `python benchmarks/flow_vs_scipy.py [--hidden 16 32 ...]
[--budget S] [--methods LSODA ...] [--plot-only]`.
"""

import jax

jax.config.update("jax_enable_x64", True)

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

from jax.flatten_util import ravel_pytree  # noqa: E402

from _common import RESULTS, environment  # noqa: E402
from stiffnode.studies.flow_training import SEED_ATOL, SEED_RTOL, digits_task, seed_comparison  # noqa: E402

OUT = Path(RESULTS) / "flow_vs_scipy.json"
HIDDEN = (16, 32, 64, 128)
FLOW_TIME = 2000.0
BUDGET = 120.0
METHODS = (("LSODA", "fd"), ("BDF", "fd"), ("vode", "fd"))


def speedup(entry: dict) -> float | None:
    """stiffnode's wall-time advantage on one scipy run: to the end, or to the t it reached."""
    return entry.get("speedup", entry.get("speedup_to_t_reached"))


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(record["sizes"].values(), key=lambda s: s["num_params"])
    n = [s["num_params"] for s in sizes]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (method, jac) in enumerate(METHODS):
        name = f"scipy_{method}_{jac}"
        pts = [(k, s[name]) for k, s in zip(n, sizes, strict=True) if name in s]
        pts = [(k, e) for k, e in pts if speedup(e) is not None]
        if not pts:
            continue
        color = f"C{i}"
        ax.plot([k for k, _ in pts], [speedup(e) for _, e in pts], "-", color=color,
                label=f"{method} ({jac} Jacobian)")
        for k, e in pts:  # filled: to t = FLOW_TIME; open: at the t scipy reached
            ax.plot(k, speedup(e), "o", color=color, mfc=color if e["finished"] else "white")
    ax.plot([], [], "ko", mfc="white", label="scipy stopped at its budget: at the t it reached")
    ax.axhline(100, color="k", ls=":", lw=1, label="100x")
    ax.set(xscale="log", yscale="log", xlabel="parameters n",
           ylabel="scipy wall time / stiffnode BDF wall time",
           title=f"gradient flow of the digits MLP, rtol {SEED_RTOL:g}, atol {SEED_ATOL:g}")
    ax.set_xticks(n, [f"{k:,}" for k in n])
    ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=list(HIDDEN))
    parser.add_argument("--budget", type=float, default=BUDGET)
    parser.add_argument("--flow-time", type=float, default=FLOW_TIME)
    parser.add_argument("--methods", nargs="+", choices=[m for m, _ in METHODS],
                        default=[m for m, _ in METHODS], help="scipy methods to run")
    parser.add_argument("--plot-only", action="store_true")
    args = parser.parse_args()
    record = json.loads(OUT.read_text()) if OUT.exists() else {}
    record.setdefault("benchmark", "flow_vs_scipy")
    record.setdefault(
        "setting",
        {"task": "digits MLP 64-h-10, tanh, full batch", "flow_time": args.flow_time,
         "rtol": SEED_RTOL, "atol": SEED_ATOL, "budget_s": args.budget,
         "methods": [f"{m}-{j}" for m, j in METHODS]},
    )
    record["environment"] = environment()
    sizes = record.setdefault("sizes", {})

    def save():
        OUT.write_text(json.dumps(record, indent=1))

    if not args.plot_only:
        methods = tuple((m, j) for m, j in METHODS if m in args.methods)
        for hidden in args.hidden:
            task = digits_task(0, hidden=hidden)
            entry = sizes.setdefault(str(hidden), {})
            entry["num_params"] = int(ravel_pytree(task.params)[0].size)
            seed_comparison(task, record["setting"]["flow_time"], args.budget, entry, save,
                            methods=methods)
            print(hidden, entry["num_params"], {
                k: round(speedup(v), 1) for k, v in entry.items()
                if k.startswith("scipy_") and speedup(v) is not None
            }, flush=True)
    plot(record, OUT.with_suffix(".png"))


if __name__ == "__main__":
    main()
