"""The `stiffnode` command line (also `python -m stiffnode`): argument parsing only; the
work is in `stiffnode.studies` (`demo`, the default command; `study`; `flow`;
`fit-kinetics`)."""

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import jax

from . import __version__
from ._validation import positive_number


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
        return positive_number("value", float(text))
    except ValueError:
        message = f"expected a positive finite number, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


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
    from .studies.demo import ATOL, BATCH_SIZE, DEFAULT_EPOCHS, N_TEST, N_TRAIN, RTOL

    demo = commands.add_parser(
        "demo",
        help="train a ResNet on Alpine02 and compare it with its neural ODEs",
        description="Train a ResNet (tanh, T = 1) on Alpine02 in float64 (Adam 1e-3, batch "
        f"{BATCH_SIZE}, {N_TRAIN} train / {N_TEST} test samples), then solve the neural ODE "
        "its weights define (piecewise constant, piecewise linear and polynomial weights) "
        f"with Euler (N = depth steps), Tsit5 and Rodas5P (rtol {RTOL:g}, atol {ATOL:g}) "
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
    _add_launch_parser(commands)
    _add_fit_kinetics_parser(commands)
    return parser


def _add_fit_kinetics_parser(commands):
    """`stiffnode fit-kinetics`: Kim et al.'s stiff neural ODEs (stiffnode.studies)."""
    from .solve import SOLVERS
    from .studies.stiff_kinetics import TARGETS

    fit = commands.add_parser(
        "fit-kinetics",
        help="stiff neural ODEs: learn Robertson's or POLLU's kinetics from a trajectory",
        description="Kim et al. (2021)'s stiff neural ODE: a GELU MLP, outputs scaled per "
        "species, trained on the scaled mean absolute error of a trajectory (Robertson: 50 "
        "log-spaced times 1e-5..1e5; POLLU: 20 times in (0, 60]) with AdamW through a stiff "
        "solver, until the loss Kim et al. report (" + ", ".join(
            f"{k} {v:g}" for k, v in TARGETS.items()) + "). Writes DIR/summary.json, "
        "fit.png, loss.png; resumes a stopped run in the same DIR.",
    )
    fit.add_argument("--problem", choices=tuple(TARGETS), default="robertson",
                     help="default robertson")
    fit.add_argument("--out", type=_output_dir, required=True, metavar="DIR",
                     help="output directory")
    fit.add_argument("--epochs", type=_positive_int, default=50_000,
                     help="at most this many epochs (default 50000)")
    fit.add_argument("--minutes", type=_positive_float, default=None,
                     help="stop after this many minutes of training")
    fit.add_argument("--solver", default="bdf", choices=sorted(SOLVERS), metavar="SOLVER",
                     help="a stiffnode solver name (default bdf)")
    fit.add_argument("--learning-rate", type=_positive_float, default=5e-3,
                     help="AdamW's learning rate (default 5e-3)")
    fit.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fit.add_argument("--init", choices=("glorot", "equinox"), default="glorot",
                     help="the network's initial weights: glorot (zero biases, as Kim et "
                     "al.'s Flux) or equinox's default (default glorot)")
    fit.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_flow_parser(commands):
    """`stiffnode flow`: gradient-flow training against optax (stiffnode.studies)."""
    from .studies import flow_training, optimizer_race

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
    flow.add_argument("--task", choices=("digits", "alpine02"), default=None,
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
    flow.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    flow.add_argument("--race", nargs="*", default=None, metavar="TASK",
                      choices=tuple(optimizer_race.TASKS),
                      help="instead: the default flow against Adam, L-BFGS, "
                      "Levenberg-Marquardt and Adam-then-L-BFGS to Adam's loss, on the given "
                      f"tasks (default all: {' '.join(optimizer_race.TASKS)}); writes "
                      "DIR/race.json, table.md, race_TASK.png")
    flow.add_argument("--seeds", type=_positive_int, default=None, metavar="N",
                      help="with --race: seeds 0..N-1 (default 5)")
    flow.add_argument("--quiet", action="store_true", help="no progress bars")
    flow.add_argument("--cpu-devices", type=_positive_int, default=None, metavar="N",
                      help="CPU devices the optax and flow runs split their batch over (data "
                      "parallel; default one)")
    _add_distributed_arguments(flow)


def _add_study_parser(commands):
    """`stiffnode study`: the seed's RES / RES L2 / RES stiff study (stiffnode.studies)."""
    from .studies.seed_resnet import MODELS, TASKS
    from .training.trials import PENALTIES

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
    study.add_argument("--models", nargs="+", choices=tuple(MODELS), default=tuple(MODELS),
                       metavar="MODEL", help=f"a subset of: {', '.join(MODELS)} (default all)")
    study.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_distributed_arguments(study)


def _add_distributed_arguments(parser):
    """The arguments of `jax.distributed.initialize` (`stiffnode.distributed`)."""
    group = parser.add_argument_group(
        "several processes (JAX's multi-controller runtime; `stiffnode launch` sets these "
        "for one machine)"
    )
    group.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                       help="process 0's address; with --num-processes and --process-id")
    group.add_argument("--num-processes", type=_positive_int, default=None, metavar="P")
    group.add_argument("--process-id", type=int, default=None, metavar="I")
    group.add_argument("--distributed", action="store_true",
                       help="join a multi-process run that JAX detects by itself (SLURM, "
                       "Open MPI, cloud TPU)")


def _add_launch_parser(commands):
    """`stiffnode launch -n P -- COMMAND ...`: P local processes of one JAX program."""
    launch = commands.add_parser(
        "launch",
        help="run study or flow as several local JAX processes (one CPU device each)",
        description="Start P processes of `stiffnode COMMAND ...` on this machine, joined "
        "by JAX's multi-controller runtime (a coordinator on 127.0.0.1), each with one CPU "
        "device unless --cpu-devices is given; exits with the first failure's status. On a "
        "cluster, run `stiffnode COMMAND ... --coordinator HOST:PORT --num-processes P "
        "--process-id I` on each host instead (or --distributed under SLURM).",
    )
    launch.add_argument("-n", "--num-processes", type=_positive_int, required=True,
                        metavar="P")
    launch.add_argument("--port", type=_positive_int, default=None,
                        help="the coordinator's port (default: a free one)")
    launch.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ...",
                        help="the stiffnode command and its arguments (study or flow)")


def _request_cpu_devices(n: int) -> None:
    """Ask JAX for `n` CPU devices. Only possible before JAX's backends start; when `main`
    runs inside a program that already uses JAX, its devices are kept (the results are the
    same; only the speed differs)."""

    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:
        pass


def main(argv: Sequence[str | os.PathLike] | None = None) -> int:
    """The `stiffnode` console command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else [os.fspath(a) for a in argv]
    parser = _build_parser()
    if not argv or argv[0] not in ("demo", "study", "flow", "launch", "fit-kinetics", "-h",
                                   "--help", "--version"):
        argv = ["demo", *argv]
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (ValueError, FloatingPointError) as e:  # a bad setting, or training diverged
        message = f"stiffnode {args.command}: error: {e}\n"
        from .distributed import ProcessLost, exit_now

        if isinstance(e, ProcessLost):  # (leave without waiting for the lost process)
            exit_now(1, message)
        parser.exit(1, message)


def _run(args: argparse.Namespace) -> int:
    if args.command == "launch":
        from .distributed import launch

        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv or argv[0] not in ("study", "flow"):
            raise ValueError("launch runs `study` or `flow` (give: launch -n P -- study ...)")
        return launch(args.num_processes, argv, port=args.port)
    if args.command == "demo":
        from .studies.demo import demo

        demo(epochs=args.epochs, width=args.width, depth=args.depth, seed=args.seed,
             out=args.out, quiet=args.quiet)
    elif args.command == "study":
        from . import distributed
        from .studies.seed_resnet import TASKS, run_study

        trials = args.trials or TASKS[args.task]["trials"]
        _request_cpu_devices(args.cpu_devices or min(os.cpu_count() or 1, trials))
        if args.coordinator is not None or args.distributed:
            distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        main_process = distributed.is_main()
        with distributed.naming_lost_processes():
            summary = run_study(args.task, out=args.out, trials=args.trials,
                                epochs=args.epochs, seed=args.seed,
                                stiff_penalty=args.stiff_proxy, models=tuple(args.models),
                                eval_every=args.eval_every, group_size=args.group_size,
                                progress=not args.quiet and main_process)
        if main_process:
            print(json.dumps(summary, indent=2))
            print(f"wrote {Path(args.out) / 'summary.json'}")
    elif args.command == "fit-kinetics":
        from .studies.stiff_kinetics import run_fit

        jax.config.update("jax_enable_x64", True)
        summary = run_fit(args.problem, args.out, epochs=args.epochs, solver=args.solver,
                          learning_rate=args.learning_rate, seed=args.seed,
                          init=args.init, max_minutes=args.minutes, progress=not args.quiet)
        print(json.dumps(summary, indent=2))
        print(f"wrote {Path(args.out) / 'summary.json'}")
    elif args.command == "flow" and args.race is not None:
        from .studies.optimizer_race import TASKS as RACE_TASKS
        from .studies.optimizer_race import run_race

        if args.task is not None or args.seed is not None:
            raise ValueError("--race takes its tasks as its own arguments and --seeds N; "
                             "--task and --seed are the flow study's")  # fmt: skip
        jax.config.update("jax_enable_x64", True)
        run_race(args.out, tasks=tuple(args.race or RACE_TASKS),
                 seeds=range(5 if args.seeds is None else args.seeds), progress=not args.quiet)
        print((Path(args.out) / "table.md").read_text(), end="")
        print(f"wrote {Path(args.out) / 'race.json'}")
    elif args.command == "flow":
        from . import distributed
        from .studies.flow_training import run_study as run_flow_study

        if args.seeds is not None:
            raise ValueError("--seeds is for --race; the flow study takes one --seed")

        if args.cpu_devices is not None:
            _request_cpu_devices(args.cpu_devices)
        if args.coordinator is not None or args.distributed:
            distributed.initialize(args.coordinator, args.num_processes, args.process_id)
        main_process = distributed.is_main()
        with distributed.naming_lost_processes():
            run_flow_study(args.task or "digits", args.out, updates=args.updates,
                           budget=args.budget,
                           seed_time=args.seed_time, seed_budget=args.seed_budget,
                           methods=args.methods, learning_rates=args.learning_rates,
                           seed=args.seed or 0, progress=not args.quiet and main_process,
                           devices=jax.devices())
        if main_process:
            print((Path(args.out) / "table.md").read_text(), end="")
            print(f"wrote {Path(args.out) / 'summary.json'}")
    return 0
