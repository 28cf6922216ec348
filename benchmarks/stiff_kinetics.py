"""Learning through stiff dynamics: gradients through stiffnode's solvers and Kim et al.'s
stiff neural ODE trained with them.

1. Gradient accuracy and cost, three problems at rtol 1e-8 (atol 1e-12):
   - `robertson_rates`: Robertson with its three log rate constants as parameters
     (perturbed by +-10%), the loss `sum_j sum_i y_i(t_j)^2 w_i` over 24 log-spaced times
     1e-5..1e5 (`w` = 1 / each species' largest value squared);
   - `pollu_rates`: POLLU's 25 log rate constants (+-10%), the same loss at 20 times in
     (0, 60];
   - `network`: Kim et al.'s Robertson neural ODE (3-5x6-3 GELU MLP, 188 parameters, outputs
     scaled per species) at its seed-0 initialisation, the scaled MAE over 50 log-spaced
     times.
   For BDF, Rodas5P, auto, Kvaerno5 (ours) with `adjoint="recursive"`, `"sensitivity"`,
   `"auto"`, `"interpolating"` (at the forward's tolerances, and with the adjoint at rtol
   1e-6), `"forward"`
   (`jax.jacfwd`), and the anchor diffrax Kvaerno5 + RecursiveCheckpointAdjoint (diffrax's
   own Newton): milliseconds per gradient after compilation, the forward solve's, their
   ratio, and the gradient's relative error against central differences of scipy Radau at
   rtol 1e-12 (the rate problems).
2. Training Kim et al.'s Robertson experiment (AdamW 5e-3) for `--epochs` epochs from the
   same initialisation with each solver: seconds per epoch and the loss reached.

Writes `benchmarks/results/stiff_kinetics.json` (`--out` another name under results/).
Float64. Run: `python benchmarks/stiff_kinetics.py [--epochs 1000] [--problems ...]
[--solvers ...] [--no-anchor] [--no-memory]`.
"""

import jax

jax.config.update("jax_enable_x64", True)

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import diffrax  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import stiffnode as sn  # noqa: E402
from _common import RESULTS, environment  # noqa: E402
from stiffnode.checkpoints import write_text  # noqa: E402
from stiffnode.node import stiff_kinetics as sk  # noqa: E402
from stiffnode.problems import pollu, robertson  # noqa: E402

OUT = Path(RESULTS)
RTOL, ATOL = 1e-8, 1e-12
MAX_STEPS = 4096  # (3 states: every step checkpointed, `stiffnode.solve.CHECKPOINT_BYTES`)
OURS = ("bdf", "rodas5p", "auto", "kvaerno5")
ADJOINTS = {
    "recursive": "recursive",
    "sensitivity": "sensitivity",  # forward sensitivities serving jax.grad
    "auto": "auto",  # sensitivity here (few parameters); AutoSwitch without sub-steps
    "interpolating": "interpolating",  # the adjoint at the forward solve's rtol
    "interpolating(rtol=1e-6)": sn.solvers.InterpolatingAdjoint(rtol=1e-6, atol=ATOL),
    "forward": "forward",
}


def best_time(fn, arg, repeats: int = 15):
    """(first call seconds, the fastest of `repeats` calls after it) of `jax.jit(fn)(arg)`:
    the fastest, as this shared 2-core machine's other load only ever adds time."""
    jitted = jax.jit(fn)
    start = time.perf_counter()
    jax.block_until_ready(jitted(arg))
    first = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(jitted(arg))
        runs.append(time.perf_counter() - start)
    return first, min(runs)


def anchor_predict(field, y0, ts, t_end, args=None):
    """diffrax's Kvaerno5 (its own Newton) + PID + RecursiveCheckpointAdjoint."""
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field), diffrax.Kvaerno5(), 0.0, t_end, None, y0, args=args,
        saveat=diffrax.SaveAt(ts=ts), max_steps=16**4,
        stepsize_controller=diffrax.PIDController(rtol=RTOL, atol=ATOL),
        adjoint=diffrax.RecursiveCheckpointAdjoint(),
    )  # fmt: skip
    return sol.ys


def rates_problem(problem, times, perturb):
    """Log rate constants as the parameters (perturbed by the factors `perturb`); the loss
    `sum_j sum_i y_i(t_j)^2 w_i`, `w_i` one over species i's largest value squared; the
    reference by central differences (step 1e-5) of scipy Radau at rtol 1e-12."""
    t_end = float(times[-1])

    def radau_ys(log_k, rtol=1e-12):
        k = np.exp(log_k)
        sol = solve_ivp(lambda t, y: problem.numpy_rhs(t, y, k), (0, t_end), problem.y0,
                        method="Radau", t_eval=times, rtol=rtol, atol=rtol * 1e-6,
                        jac=lambda t, y: problem.numpy_jac(t, y, k))  # fmt: skip
        return sol.y.T

    log_k0 = np.log(np.asarray(problem.args)) + np.log(perturb)
    peak = np.max(np.abs(radau_ys(log_k0)), axis=0)
    weights = jnp.asarray(1.0 / np.where(peak > 0, peak, 1.0) ** 2)

    def field(t, y, log_k):
        return problem.vector_field(t, y, jnp.exp(log_k))

    def loss_of(ys):
        return jnp.sum(ys**2 * weights)

    def ours(log_k, solver, adjoint):
        sol = sn.solve(field, jnp.asarray(problem.y0), 0.0, t_end, solver=solver, args=log_k,
                       rtol=RTOL, atol=ATOL, saveat=times, adjoint=adjoint,
                       max_steps=MAX_STEPS)  # fmt: skip
        return loss_of(sol.ys)

    def anchor(log_k):
        return loss_of(anchor_predict(field, jnp.asarray(problem.y0), times, t_end, log_k))

    def radau(log_k):
        return float(np.sum(radau_ys(log_k) ** 2 * np.asarray(weights)))

    eye = 1e-5 * np.eye(log_k0.size)
    reference = np.array([(radau(log_k0 + e) - radau(log_k0 - e)) / 2e-5 for e in eye])
    return jnp.asarray(log_k0), ours, anchor, reference


def robertson_rates():
    return rates_problem(robertson(), np.logspace(-5, 5, 24), np.array([1.1, 0.9, 1.1]))


def pollu_rates():
    perturb = np.where(np.arange(25) % 2 == 0, 1.1, 0.9)
    return rates_problem(pollu(), np.linspace(0.0, 60.0, 21)[1:], perturb)


def network_problem():
    data = sk.kinetics_data("robertson")
    field = sk.kinetics_model(data, key=jax.random.PRNGKey(0), width=5, depth=6)
    params, static = eqx.partition(field, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)

    def loss_of(ys):
        return jnp.mean(jnp.abs(ys - data.ys) / jnp.asarray(data.scale))

    def ours(p, solver, adjoint):
        return loss_of(sk.predict(eqx.combine(unravel(p), static), data, solver=solver,
                                  rtol=RTOL, atol=ATOL, adjoint=adjoint,
                                  max_steps=MAX_STEPS))  # fmt: skip

    def anchor(p):
        f = eqx.combine(unravel(p), static)
        return loss_of(anchor_predict(f, data.y0, data.ts, data.t_end))

    return flat, ours, anchor, None


PROBLEMS = {"robertson_rates": robertson_rates, "pollu_rates": pollu_rates,
            "network": network_problem}  # fmt: skip


def gradient_costs(problems=tuple(PROBLEMS), solvers=OURS, anchor_too=True) -> dict:
    rows = {}
    for name in problems:
        p, ours, anchor, reference = PROBLEMS[name]()
        cases = [(s, a) for s in solvers for a in ADJOINTS] + [("anchor", None)] * anchor_too
        for solver, adjoint in cases:
            if solver == "anchor":
                loss, label = anchor, "diffrax Kvaerno5 + RecursiveCheckpointAdjoint"
            else:
                loss = lambda q, f=ours, s=solver, a=ADJOINTS[adjoint]: f(q, s, a)  # noqa: E731
                label = f"{solver} {adjoint}"
            derivative = jax.jacfwd(loss) if adjoint == "forward" else jax.grad(loss)
            try:
                _, forward_s = best_time(loss, p)
                first_call_s, grad_s = best_time(derivative, p)
                g = np.asarray(jax.jit(derivative)(p))
            except Exception as e:  # noqa: BLE001 (recorded, not hidden)
                rows[f"{name}/{label}"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                print(name, label, "error", rows[f"{name}/{label}"]["error"], flush=True)
                continue
            row = {
                "problem": name, "method": label, "ms_per_gradient": 1e3 * grad_s,
                "ms_forward": 1e3 * forward_s, "gradient_over_forward": grad_s / forward_s,
                "first_call_s": first_call_s,
            }  # fmt: skip
            if reference is not None:
                row["relative_error"] = float(
                    np.linalg.norm(g - reference) / np.linalg.norm(reference)
                )
            rows[f"{name}/{label}"] = row
            print(json.dumps(row), flush=True)
    return rows


def adjoint_memory() -> dict:
    """Peak memory of one POLLU gradient (25 log rates, 20 states) as XLA plans it
    (`compiled.memory_analysis()`: temporaries + arguments + outputs) against `max_steps`,
    the step budget that sizes every buffer: `recursive` (every step checkpointed while
    they fit in `solve.CHECKPOINT_BYTES`, then diffrax's ~sqrt(2 max_steps)) against
    `interpolating` (a checkpoint every 64 accepted steps plus one interval's dense
    output)."""
    problem = pollu()
    p = jnp.log(jnp.asarray(problem.args))  # (memory does not depend on the values)

    def field(t, y, lk):
        return problem.vector_field(t, y, jnp.exp(lk))

    rows = {}
    for max_steps in (100, 1_000, 10_000, 100_000):
        for adjoint in ("recursive", "interpolating"):

            def loss(q, m=max_steps, a=adjoint):
                sol = sn.solve(field, jnp.asarray(problem.y0), 0.0, 60.0, solver="bdf",
                               args=q, rtol=RTOL, atol=ATOL, saveat=jnp.linspace(3.0, 60.0, 20),
                               adjoint=a, max_steps=m)  # fmt: skip
                return jnp.sum(sol.ys**2)

            compiled = jax.jit(jax.grad(loss)).lower(p).compile()
            m = compiled.memory_analysis()
            total = m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes
            rows[f"{adjoint}/{max_steps}"] = {"adjoint": adjoint, "max_steps": max_steps,
                                             "bytes": int(total)}  # fmt: skip
            print(json.dumps(rows[f"{adjoint}/{max_steps}"]), flush=True)
    return rows


def training(epochs: int) -> dict:
    data = sk.kinetics_data("robertson")
    field = sk.kinetics_model(data, key=jax.random.PRNGKey(0), width=5, depth=6)
    runs = {}
    for solver in ("bdf", "rodas5p", "kvaerno5"):
        fit = sk.fit_kinetics(field, data, epochs=epochs, epochs_per_record=epochs,
                              solver=solver)  # fmt: skip
        runs[solver] = {
            "epochs": fit.epochs, "seconds_with_compilation": fit.seconds,
            "final_loss": float(fit.history["loss"][-1]),
            "loss_every_100": fit.history["loss"][::100].tolist(),
        }  # fmt: skip
        print(solver, json.dumps(runs[solver]), flush=True)
    return runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1000, help="0: no training section")
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=list(PROBLEMS))
    parser.add_argument("--solvers", nargs="+", choices=OURS, default=list(OURS))
    parser.add_argument("--no-anchor", action="store_true", help="skip diffrax's Kvaerno5")
    parser.add_argument("--no-memory", action="store_true", help="skip adjoint_memory")
    parser.add_argument("--out", default="stiff_kinetics.json", help="file under results/")
    args = parser.parse_args()
    record = {
        "rtol": RTOL, "atol": ATOL, "max_steps": MAX_STEPS,
        "gradients": gradient_costs(args.problems, args.solvers, not args.no_anchor),
        "adjoint_memory": None if args.no_memory else adjoint_memory(),
        "training": training(args.epochs) if args.epochs else None,
        "environment": environment(),
    }  # fmt: skip
    path = OUT / args.out
    write_text(path, json.dumps(record, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
