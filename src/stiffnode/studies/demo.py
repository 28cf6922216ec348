"""The demo (`stiffnode demo`, what the command runs when given no other): a small ResNet
trained on Alpine02 in float64, compared with the neural ODEs its weights define (piecewise
constant, piecewise linear and polynomial weights), solved with Euler (N steps: the ResNet
itself), Tsit5 and Rodas5P on the test set."""

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import __version__, checkpoints
from ..data.datasets import alpine02_dataset
from ..models import NeuralODE, ResNet, layer_times
from ..training.losses import model_mse
from ..training.train import fit

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
    ("rodas5p", "Rodas5P, adaptive", "rodas5p"),
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
                    # -1: not counted (diffrax's implicit solvers' Newton iterations).
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
        checkpoints.write_text(path, json.dumps(results, indent=2) + "\n")
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
    if any(r["mean_vf_evals"] is None for r in results["ode"]):
        print("VF evals n/a: not counted by that solver (a diffrax implicit solver's Newton "
              "iterations run inside diffrax)", file=stream)
    solves = ", ".join(f"{k} {v:.1f} s" for k, v in t["solve_s"].items())
    print(f"Time: {t['total_s']:.1f} s (training {t['training_s']:.1f} s; solves incl. "
          f"compilation: {solves})", file=stream)


