"""Learning through stiff dynamics: gradients through stiffnode's solvers and Kim et al.'s
stiff neural ODE trained with them.

1. Gradient accuracy and cost at rtol 1e-8 (atol 1e-12):
   - `robertson_rates`: Robertson with its three log rate constants as parameters
     (perturbed by +-10%), the loss `sum_j sum_i y_i(t_j)^2 w_i` over 24 log-spaced times
     1e-5..1e5 (`w` = 1 / each species' largest value squared);
   - `pollu_rates`: POLLU's 25 log rate constants (+-10%), the same loss at 20 times in
     (0, 60];
   - `vdp_mu`: van der Pol at `mu` = 1.1e3 on [0, 3000], `log mu` the parameter, the same
     loss at 20 times 150..3000 (Radau differences as above);
   - `linear_eigenvalues`: `y' = A y` with eigenvalues -1.1, -90, -1.1e4, -9e5, their logs
     the parameters, the same loss at 20 log-spaced times 1e-7..10 (closed-form gradient);
   - `network`: Kim et al.'s Robertson neural ODE (3-5x6-3 GELU MLP, 188 parameters, outputs
     scaled per species) at its seed-0 initialisation, the scaled MAE over 50 log-spaced
     times.
   For BDF, Rodas5P, auto, Kvaerno5 (ours) with `adjoint="recursive"`, `"sensitivity"`,
   `"auto"`, `"interpolating"` (at the forward's tolerances, and with the adjoint at rtol
   1e-6), `"forward"`
   (`jax.jacfwd`), and the anchor diffrax Kvaerno5 + RecursiveCheckpointAdjoint (diffrax's
   own Newton): milliseconds per gradient after compilation, the forward solve's, their
   ratio, and the gradient's relative error against the reference (all but `network`).
2. Training Kim et al.'s Robertson experiment (`stiffnode fit-kinetics`'s settings) through
   BDF, Rodas5P and the anchor until their reported loss 5e-3 or `--training-minutes`
   each: epochs, seconds, the first epoch at the target.

Writes `benchmarks/results/stiff_kinetics.json` (`--out` another name under results/).
Float64. Run: `python benchmarks/stiff_kinetics.py [--training-minutes 10] [--problems ...]
[--solvers ...] [--no-anchor] [--no-memory]`.
"""

import jax

jax.config.update("jax_enable_x64", True)

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

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
from stiffnode.problems import pollu, robertson, van_der_pol  # noqa: E402
from stiffnode.studies.stiff_kinetics import TARGETS  # noqa: E402

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

    ours, anchor = weighted_square_loss(field, problem.y0, times, weights)

    def radau(log_k):
        return float(np.sum(radau_ys(log_k) ** 2 * np.asarray(weights)))

    eye = 1e-5 * np.eye(log_k0.size)
    reference = np.array([(radau(log_k0 + e) - radau(log_k0 - e)) / 2e-5 for e in eye])
    return jnp.asarray(log_k0), ours, anchor, reference


def weighted_square_loss(field, y0, times, weights):
    """`(ours, anchor)`: `p -> sum_j sum_i y_i(t_j)^2 w_i` of the solve of `dy/dt =
    field(t, y, p)` from `y0` at `t = 0`, through `sn.solve(solver, adjoint)` or the anchor."""
    t_end, y0 = float(times[-1]), jnp.asarray(y0)

    def ours(p, solver, adjoint):
        sol = sn.solve(field, y0, 0.0, t_end, solver=solver, args=p, rtol=RTOL, atol=ATOL,
                       saveat=times, adjoint=adjoint, max_steps=MAX_STEPS)  # fmt: skip
        return jnp.sum(sol.ys**2 * weights)

    def anchor(p):
        return jnp.sum(anchor_predict(field, y0, times, t_end, p) ** 2 * weights)

    return ours, anchor


def robertson_rates():
    return rates_problem(robertson(), np.logspace(-5, 5, 24), np.array([1.1, 0.9, 1.1]))


def pollu_rates():
    perturb = np.where(np.arange(25) % 2 == 0, 1.1, 0.9)
    return rates_problem(pollu(), np.linspace(0.0, 60.0, 21)[1:], perturb)


def vdp_mu():
    """Van der Pol at `mu = 1.1e3` on [0, 3000] (about 1.7 relaxation periods), `log mu` the
    parameter, the loss at 20 times 150..3000."""
    vdp = van_der_pol(1e3)
    first = lambda fn: lambda t, y, mu: fn(t, y, mu[0])  # noqa: E731 (mu as a 1-vector)
    problem = SimpleNamespace(y0=vdp.y0, args=np.array([1e3]),
                              vector_field=first(vdp.vector_field),
                              numpy_rhs=first(vdp.numpy_rhs), numpy_jac=first(vdp.numpy_jac))
    return rates_problem(problem, np.linspace(150.0, 3000.0, 20), np.array([1.1]))


def linear_eigenvalues():
    """`y' = A y`, `A = V diag(lambda) V^-1` with `lambda` about -1, -1e2, -1e4, -1e6 and a
    fixed well-conditioned `V`; the parameters `log(-lambda)`, the loss at 20 log-spaced
    times 1e-7..10. Reference: the closed form `y(t) = V exp(lambda t) V^-1 y0` and its
    derivative `dy/dtheta_k = V_k c_k lambda_k t exp(lambda_k t)`, `c = V^-1 y0`."""
    lam0 = -np.array([1.0, 1e2, 1e4, 1e6]) * np.array([1.1, 0.9, 1.1, 0.9])
    v = np.eye(4) + 0.3 * np.cos(np.arange(16.0)).reshape(4, 4)
    v_inv, y0 = np.linalg.inv(v), np.array([1.0, 0.5, -0.5, 0.25])
    c, times = v_inv @ y0, np.logspace(-7, 1, 20)
    modes = np.exp(np.outer(times, lam0)) * c  # (time, mode)
    ys = modes @ v.T
    weights = 1.0 / np.max(np.abs(ys), axis=0) ** 2
    # d ys[j, i] / d theta_k = v[i, k] c_k lambda_k t_j exp(lambda_k t_j)
    dys = np.einsum("ik,jk->jik", v, modes * lam0 * times[:, None])
    reference = np.einsum("ji,jik->k", 2.0 * ys * weights, dys)
    v_j, v_inv_j = jnp.asarray(v), jnp.asarray(v_inv)

    def field(t, y, theta):
        return v_j @ (-jnp.exp(theta) * (v_inv_j @ y))

    ours, anchor = weighted_square_loss(field, y0, times, jnp.asarray(weights))
    return jnp.asarray(np.log(-lam0)), ours, anchor, reference


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


PROBLEMS = {"robertson_rates": robertson_rates, "pollu_rates": pollu_rates, "vdp_mu": vdp_mu,
            "linear_eigenvalues": linear_eigenvalues, "network": network_problem}  # fmt: skip


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


TRAINING = {
    "bdf": dict(solver="bdf"),
    "rodas5p": dict(solver="rodas5p"),
    "diffrax Kvaerno5 + RecursiveCheckpointAdjoint": dict(
        solver=diffrax.Kvaerno5(), adjoint=diffrax.RecursiveCheckpointAdjoint()),
}  # fmt: skip


def training(minutes: float) -> dict:
    """Kim et al.'s Robertson experiment as `stiffnode fit-kinetics` runs it (seed 0, Glorot
    initialisation, AdamW 5e-3, `predict`'s tolerances) through each of `TRAINING` until
    the scaled MAE 5e-3 or `minutes` of training."""
    data = sk.kinetics_data("robertson")
    field = sk.kinetics_model(data, key=jax.random.PRNGKey(0), width=5, depth=6)
    target = TARGETS["robertson"]
    runs = {}
    for label, options in TRAINING.items():
        fit = sk.fit_kinetics(field, data, epochs=50_000, epochs_per_record=500, target=target,
                              max_seconds=60.0 * minutes, **options)  # fmt: skip
        loss = fit.history["loss"]
        reached = np.flatnonzero(loss <= target)
        runs[label] = {
            "epochs": fit.epochs, "seconds_with_compilation": fit.seconds,
            "ms_per_epoch": 1e3 * fit.seconds / fit.epochs, "lowest_loss": float(loss.min()),
            "first_epoch_at_target": int(reached[0]) if reached.size else None,
            "loss_every_500": loss[::500].tolist(),
        }  # fmt: skip
        print(label, json.dumps({k: v for k, v in runs[label].items() if k[0] != "l"}),
              flush=True)  # fmt: skip
    return {"target": target, "max_minutes": minutes, "runs": runs}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--training-minutes", type=float, default=10.0,
                        help="per solver; 0: no training section")
    parser.add_argument("--problems", nargs="*", choices=list(PROBLEMS), default=list(PROBLEMS))
    parser.add_argument("--solvers", nargs="+", choices=OURS, default=list(OURS))
    parser.add_argument("--no-anchor", action="store_true", help="skip diffrax's Kvaerno5")
    parser.add_argument("--no-memory", action="store_true", help="skip adjoint_memory")
    parser.add_argument("--out", default="stiff_kinetics.json", help="file under results/")
    args = parser.parse_args()
    record = {
        "rtol": RTOL, "atol": ATOL, "max_steps": MAX_STEPS,
        "gradients": gradient_costs(args.problems, args.solvers, not args.no_anchor),
        "adjoint_memory": None if args.no_memory else adjoint_memory(),
        "training": training(args.training_minutes) if args.training_minutes else None,
        "environment": environment(),
    }  # fmt: skip
    path = OUT / args.out
    write_text(path, json.dumps(record, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
