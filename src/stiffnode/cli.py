"""The `stiffnode` command line (also `python -m stiffnode`).

`stiffnode demo` (what runs when no command is given) trains a small ResNet on Alpine02 in
float64 and compares it with the neural ODEs its weights define, solved with Euler (N
steps: the ResNet itself), Tsit5 and Kvaerno5.
"""

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import __version__
from .data import alpine02_dataset
from .losses import model_mse
from .models import NeuralODE, ResNet, layer_times
from .train import fit

PARAMETERIZATIONS = ("constant", "linear", "polynomial")
DEFAULT_EPOCHS = 300
BATCH_SIZE = 45
LEARNING_RATE = 1e-3
N_TRAIN, N_TEST, DIM = 900, 100, 2
T = 1.0
RTOL, ATOL = 1e-8, 1e-9

# (key, label, solver name); Euler takes N = depth fixed steps, the others are adaptive.
_SOLVERS = (
    ("euler", "Euler, N steps", "euler"),
    ("tsit5", "Tsit5, adaptive", "tsit5"),
    ("kvaerno5", "Kvaerno5, adaptive", "kvaerno5"),
)


class _SelectedField(eqx.Module):
    """`fields[index](t, y, args)`: one of several vector fields, picked by a traced index.

    The demo's three parameterisations then share one compiled solve per solver (compiling
    diffrax's solvers dominates the demo's run time); `lax.switch` evaluates only the
    selected field, so each solve is the one that field alone would give.
    """

    fields: tuple
    index: jax.Array

    def __call__(self, t, y, args=None):
        branches = [lambda t, y, f=f: f(t, y, args) for f in self.fields]
        return jax.lax.switch(self.index, branches, t, y)


@eqx.filter_jit
def _solve_test_set(node, x, jump_ts, rtol, atol, solver, dt0):
    """`node(x_i)` and the solve statistics for every test sample (vmapped solves).

    `jump_ts`, `rtol` and `atol` are arrays (traced), `solver` and `dt0` static.
    """

    def one(xi):
        sol = node.solve(xi, solver=solver, rtol=rtol, atol=atol, dt0=dt0, jump_ts=jump_ts)
        return node.readout(sol.ys[-1]), sol.stats

    return jax.vmap(one)(x)


@eqx.filter_jit
def _resnet_metrics(resnet, data):
    """The ResNet's test outputs, test MSE and train MSE."""
    return (jax.vmap(resnet)(data.x_test), model_mse(resnet, data.x_test, data.y_test),
            model_mse(resnet, data.x_train, data.y_train))


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _output_dir(text: str) -> Path:
    """The output directory, created (with its parents) and tried with a scratch file when
    the arguments are parsed, so that a bad `--out` is a usage error before any work."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot write to {text!r}: {e.strerror}") from None
    return path


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stiffnode",
        description="Stiffness in neural networks seen as differential equations. "
        "Without a command, runs `demo`.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="train a ResNet on Alpine02 and compare it with its neural ODEs",
        description="Train a ResNet (tanh, T = 1) on Alpine02 in float64 (Adam 1e-3, batch "
        f"{BATCH_SIZE}, {N_TRAIN} train / {N_TEST} test samples), then solve the neural ODE "
        "its weights define (piecewise constant, piecewise linear and polynomial weights) "
        f"with Euler (N = depth steps), Tsit5 and Kvaerno5 (rtol {RTOL:g}, atol {ATOL:g}) "
        "and compare with the ResNet on the test set.",
    )
    demo.add_argument("--epochs", type=_positive_int, default=DEFAULT_EPOCHS,
                      help=f"training epochs (default {DEFAULT_EPOCHS})")
    demo.add_argument("--width", type=_positive_int, default=16,
                      help="ResNet width (default 16)")
    demo.add_argument("--depth", type=_positive_int, default=8,
                      help="number of residual layers N (default 8)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--out", type=_output_dir, default=None, metavar="DIR",
                      help="also write the figures to DIR/demo.json")
    demo.add_argument("--quiet", action="store_true",
                      help="no progress bar or progress messages, only the results")
    _add_study_parser(commands)
    _add_flow_parser(commands)
    return parser


def _add_flow_parser(commands):
    """`stiffnode flow`: gradient-flow training against optax (stiffnode.studies)."""
    from .studies import flow_training

    flow = commands.add_parser(
        "flow",
        help="training as an ODE: gradient flow (Tsit5, Kvaerno5, BDF, Rodas3) vs SGD/Adam vs "
        "scipy",
        description="Train with optax SGD, momentum and Adam (learning rates tuned on a grid) "
        "and by solving the gradient flow dtheta/dt = -grad L with Tsit5, Kvaerno5, BDF and Rodas3 "
        "(Hessian-vector products) to Adam's final train loss; then the seed's setting: "
        "scipy LSODA/BDF/vode/zvode with finite-difference Jacobians (atol 1e-8, rtol 1e-6) "
        "against stiffnode's BDF on the same flow. Writes DIR/summary.json, history.json, "
        "table.md and PNGs; resumes a stopped run in the same DIR.",
    )
    flow.add_argument("--task", choices=("digits", "alpine02"), default="digits",
                      help="digits (MLP classifier, sklearn's bundled digits) or alpine02 "
                      "(the seed's ResNet regression); default digits")
    flow.add_argument("--out", type=_output_dir, required=True, metavar="DIR",
                      help="output directory")
    flow.add_argument("--updates", type=_positive_int, default=flow_training.UPDATES,
                      help=f"updates of SGD/momentum/Adam (default {flow_training.UPDATES})")
    flow.add_argument("--budget", type=_positive_float, default=flow_training.BUDGET,
                      help=f"wall seconds per flow solver (default {flow_training.BUDGET:g})")
    flow.add_argument("--seed-time", type=_positive_float, default=flow_training.SEED_TIME,
                      help="flow time of the scipy comparison "
                      f"(default {flow_training.SEED_TIME:g})")
    flow.add_argument("--seed-budget", type=_positive_float, default=flow_training.SEED_BUDGET,
                      help=f"wall seconds per scipy run (default {flow_training.SEED_BUDGET:g})")
    flow.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                      choices=flow_training.METHODS,
                      help=f"subset of: {' '.join(flow_training.METHODS)}")
    flow.add_argument("--learning-rates", type=_positive_float, nargs="+", default=None,
                      metavar="LR",
                      help="learning rates tried for SGD, momentum and Adam "
                      "(default 1e-3 3e-3 ... 3)")
    flow.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    flow.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_study_parser(commands):
    """`stiffnode study`: the seed's RES / RES L2 / RES stiff study (stiffnode.studies)."""
    from .studies.seed_resnet import TASKS
    from .trials import PENALTIES

    study = commands.add_parser(
        "study",
        help="the seed's ResNet study: RES, RES L2, RES stiff over many trials",
        description="Train RES (no penalty), RES L2 (lambda 1e-5) and RES stiff (spectral "
        "radius, lambda 1e-3) ResNets over many initialisations (vmapped) and write "
        "DIR/summary.json (medians of ER, GE, stiffness, wall time), CSVs and PNGs. Resumes "
        "an interrupted run in the same DIR.",
    )
    study.add_argument("--task", choices=tuple(TASKS), default="pollu",
                       help="alpine02 (width 20, depth 10, 10k epochs) or pollu (the POLLU "
                       "ensemble; width 50, depth 16, 1k epochs); default pollu")
    study.add_argument("--trials", type=_positive_int, default=None,
                       help="initialisations per model (default 25)")
    study.add_argument("--epochs", type=_positive_int, default=None,
                       help="training epochs (default: the task's seed setting)")
    study.add_argument("--out", type=_output_dir, required=True, metavar="DIR",
                       help="output directory (also where a stopped study resumes)")
    study.add_argument("--seed", type=int, default=0, help="first trial seed (default 0)")
    study.add_argument("--stiff-proxy", choices=PENALTIES, default="amortised",
                       help="RES stiff's penalty (default amortised power iteration; the "
                       "seed's: gelfand)")
    study.add_argument("--eval-every", type=_positive_int, default=None,
                       help="epochs between history records")
    study.add_argument("--group-size", type=_positive_int, default=None,
                       help="trials per vmapped program (default all)")
    study.add_argument("--cpu-devices", type=_positive_int, default=None, metavar="N",
                       help="CPU devices the trials are spread over, each running on its own "
                       "thread (default: the number of cores, at most the trials)")
    study.add_argument("--quiet", action="store_true", help="no progress bars")


def _request_cpu_devices(n: int) -> None:
    """Ask JAX for `n` CPU devices. Only possible before JAX's backends start; when `main`
    runs inside a program that already uses JAX, its devices are kept (the results are the
    same; only the speed differs)."""
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        pass


def _float_or_none(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def demo(
    *,
    epochs: int = DEFAULT_EPOCHS,
    width: int = 16,
    depth: int = 8,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    quiet: bool = False,
    stream: TextIO | None = None,
) -> dict[str, Any]:
    """Run the demo, print its table to `stream` (stdout) and return the figures."""
    stream = sys.stdout if stream is None else stream

    def log(message: str):
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    start = time.perf_counter()
    with jax.enable_x64(True):
        data = alpine02_dataset(seed, DIM, N_TRAIN, N_TEST, dtype=jnp.float64)
        model_key, train_key = jax.random.split(jax.random.PRNGKey(seed))
        resnet = ResNet(DIM, 1, width, depth, key=model_key, activation=jnp.tanh, T=T,
                        dtype=jnp.float64)

        log(f"training a ResNet (width {width}, depth {depth}) for {epochs} epochs ...")
        t0 = time.perf_counter()
        resnet, history = fit(resnet, data, optimizer=optax.adam(LEARNING_RATE),
                              epochs=epochs, batch_size=BATCH_SIZE, key=train_key,
                              progress=not quiet)
        train_seconds = time.perf_counter() - t0

        resnet_test, resnet_mse, resnet_train_mse = _resnet_metrics(resnet, data)
        resnet_test, y_test = np.asarray(resnet_test), np.asarray(data.y_test)

        # Polynomial weights of degree N - 1 interpolate all N layers: Euler is the ResNet.
        degree = depth - 1
        fields = tuple(
            NeuralODE.from_resnet(resnet, p, **({"degree": degree} if p == "polynomial" else {}))
            .vector_field
            for p in PARAMETERIZATIONS
        )
        # Steps land on the layer times for the piecewise weights; the polynomial has no
        # jumps, so it gets jump times past the horizon (never reached, never counted).
        layer_jumps = layer_times(depth, T)[1:]
        jump_ts = {"constant": layer_jumps, "linear": layer_jumps,
                   "polynomial": np.full_like(layer_jumps, 2 * T)}
        rtol, atol = jnp.asarray(RTOL), jnp.asarray(ATOL)

        rows, solve_seconds = [], {}
        for key, label, solver in _SOLVERS:
            log(f"solving the neural ODEs with {solver} (compiling) ...")
            t0 = time.perf_counter()
            dt0 = T / depth if solver == "euler" else None
            for index, parameterization in enumerate(PARAMETERIZATIONS):
                node = NeuralODE(_SelectedField(fields, jnp.asarray(index)), T=T,
                                 input=resnet.input, output=resnet.output)
                pred, stats = _solve_test_set(node, data.x_test,
                                              jnp.asarray(jump_ts[parameterization]), rtol,
                                              atol, solver, dt0)
                pred, stats = np.asarray(pred), {k: np.asarray(v) for k, v in stats.items()}
                evals = stats["num_vf_evals"]
                rows.append({
                    "parameterization": parameterization,
                    "solver": key,
                    "label": label.replace("N steps", f"N={depth} steps"),
                    "test_mse": _float_or_none(np.mean((pred - y_test) ** 2)),
                    "max_abs_diff_vs_resnet": _float_or_none(np.max(np.abs(pred - resnet_test))),
                    "mean_steps": float(np.mean(stats["num_steps"])),
                    "max_steps": int(np.max(stats["num_steps"])),
                    "mean_accepted_steps": float(np.mean(stats["num_accepted_steps"])),
                    "mean_rejected_steps": float(np.mean(stats["num_rejected_steps"])),
                    # -1: not counted (implicit solvers' Newton iterations happen in diffrax).
                    "mean_vf_evals": None if np.any(evals < 0) else float(np.mean(evals)),
                })
            solve_seconds[key] = time.perf_counter() - t0
    total_seconds = time.perf_counter() - start

    euler_diff = {r["parameterization"]: r["max_abs_diff_vs_resnet"] for r in rows
                  if r["solver"] == "euler"}
    results = {
        "command": "demo",
        "config": {
            "epochs": epochs, "width": width, "depth": depth, "seed": seed, "T": T,
            "activation": "tanh", "batch_size": BATCH_SIZE, "optimizer": "adam",
            "learning_rate": LEARNING_RATE, "dataset": "alpine02", "dim": DIM,
            "n_train": N_TRAIN, "n_test": N_TEST, "dtype": "float64", "rtol": RTOL,
            "atol": ATOL, "polynomial_degree": degree,
        },
        "training": {
            "seconds": train_seconds,
            "history": {k: [_float_or_none(v) for v in vs] for k, vs in history.items()},
        },
        "resnet": {"test_mse": _float_or_none(resnet_mse),
                   "train_mse": _float_or_none(resnet_train_mse)},
        "ode": rows,
        "euler_max_abs_diff_vs_resnet": euler_diff,
        "timings": {"training_s": train_seconds, "solve_s": solve_seconds,
                    "total_s": total_seconds},
        "versions": {"stiffnode": __version__, "jax": jax.__version__},
    }
    _print_table(results, stream)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "demo.json"
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {path}", file=stream)
    return results


def _fmt(value: float | None, spec: str = ".3e") -> str:
    return "n/a" if value is None else format(value, spec)


def _print_table(results: dict[str, Any], stream: TextIO):
    c, t = results["config"], results["timings"]
    print(f"Alpine02 (dim {c['dim']}): {c['n_train']} train / {c['n_test']} test samples, "
          f"{c['dtype']}", file=stream)
    print(f"ResNet: width {c['width']}, depth N={c['depth']}, {c['activation']}, T={c['T']:g}; "
          f"Adam {c['learning_rate']:g}, batch {c['batch_size']}, {c['epochs']} epochs "
          f"({t['training_s']:.1f} s)", file=stream)
    print(f"ResNet test MSE: {_fmt(results['resnet']['test_mse'])}   "
          f"(train MSE {_fmt(results['resnet']['train_mse'])})", file=stream)
    print(f"ODE solves on the {c['n_test']} test samples; adaptive: rtol {c['rtol']:g}, atol "
          f"{c['atol']:g}; polynomial weights of degree {c['polynomial_degree']} (= N - 1)",
          file=stream)
    print(file=stream)
    header = (f"{'weights':<12} {'solver':<20} {'test MSE':>10} {'max|ODE-ResNet|':>16} "
              f"{'mean steps':>11} {'rejected':>9} {'mean VF evals':>14}")
    print(header, file=stream)
    print("-" * len(header), file=stream)
    for parameterization in PARAMETERIZATIONS:
        for r in results["ode"]:
            if r["parameterization"] != parameterization:
                continue
            print(f"{parameterization:<12} {r['label']:<20} {_fmt(r['test_mse']):>10} "
                  f"{_fmt(r['max_abs_diff_vs_resnet']):>16} {r['mean_steps']:>11.1f} "
                  f"{r['mean_rejected_steps']:>9.1f} {_fmt(r['mean_vf_evals'], '.1f'):>14}",
                  file=stream)
    print(file=stream)
    diffs = ", ".join(f"{p} {_fmt(d, '.1e')}"
                      for p, d in results["euler_max_abs_diff_vs_resnet"].items())
    print(f"Euler with N={c['depth']} steps vs ResNet, max abs difference: {diffs}",
          file=stream)
    print("VF evals n/a: not counted for implicit solvers (their Newton iterations run "
          "inside diffrax)", file=stream)
    solves = ", ".join(f"{k} {v:.1f} s" for k, v in t["solve_s"].items())
    print(f"Time: {t['total_s']:.1f} s (training {t['training_s']:.1f} s; solves incl. "
          f"compilation: {solves})", file=stream)


def main(argv: Sequence[str | os.PathLike] | None = None) -> int:
    """The `stiffnode` console command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else [os.fspath(a) for a in argv]
    parser = _build_parser()
    if not argv or argv[0] not in ("demo", "study", "flow", "-h", "--help", "--version"):
        argv = ["demo", *argv]
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo(epochs=args.epochs, width=args.width, depth=args.depth, seed=args.seed,
             out=args.out, quiet=args.quiet)
    elif args.command == "study":
        from .studies.seed_resnet import TASKS, run_study

        trials = args.trials or TASKS[args.task]["trials"]
        _request_cpu_devices(args.cpu_devices or min(os.cpu_count() or 1, trials))
        summary = run_study(args.task, out=args.out, trials=args.trials, epochs=args.epochs,
                            seed=args.seed, stiff_penalty=args.stiff_proxy,
                            eval_every=args.eval_every, group_size=args.group_size,
                            progress=not args.quiet)
        print(json.dumps(summary, indent=2))
        print(f"wrote {Path(args.out) / 'summary.json'}")
    elif args.command == "flow":
        from .studies.flow_training import run_study as run_flow_study

        run_flow_study(args.task, args.out, updates=args.updates, budget=args.budget,
                       seed_time=args.seed_time, seed_budget=args.seed_budget,
                       methods=args.methods, learning_rates=args.learning_rates,
                       seed=args.seed, progress=not args.quiet)
        print((Path(args.out) / "table.md").read_text(), end="")
        print(f"wrote {Path(args.out) / 'summary.json'}")
    return 0
