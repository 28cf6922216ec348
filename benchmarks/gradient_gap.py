"""Backsolve (optimize-then-discretize) vs recursive (discretize-then-optimize) gradient gap.

A ResNet (width 8, depth 8, tanh, float64) read as its piecewise-constant neural ODE, solved
with N explicit Euler steps, N = 8 .. 1024. For each N: the relative difference, over all
parameters and over the layer weights alone, between the backsolve-adjoint gradient and
backpropagation through the same N Euler steps; and the observed convergence rate.

Writes `benchmarks/results/gradient_gap.json` and `benchmarks/results/gradient_gap.png`.
Run: `.venv/bin/python benchmarks/gradient_gap.py`.
"""

import jax

jax.config.update("jax_enable_x64", True)

import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from stiffnode import NeuralODE, ResNet  # noqa: E402
from stiffnode.node.gradients import gradient_gap, node_gradient, resnet_gradient  # noqa: E402

RESULTS = Path(__file__).parent / "results"
IN_SIZE, OUT_SIZE, WIDTH, DEPTH, T, SEED = 3, 2, 8, 8, 1.0, 0
NUM_STEPS = tuple(2**k for k in range(3, 11))  # 8 .. 1024


def mse(prediction, target):
    return jnp.mean((prediction - target) ** 2)


def main() -> dict:
    k_model, k_x, k_y = jax.random.split(jax.random.PRNGKey(SEED), 3)
    resnet = ResNet(IN_SIZE, OUT_SIZE, WIDTH, DEPTH, key=k_model, activation=jnp.tanh, T=T,
                    dtype=jnp.float64)
    x = jax.random.normal(k_x, (IN_SIZE,), jnp.float64)
    y = jax.random.normal(k_y, (OUT_SIZE,), jnp.float64)
    max_steps = max(NUM_STEPS)

    start = time.perf_counter()
    gap = gradient_gap(resnet, mse, x, y, NUM_STEPS, max_steps=max_steps)
    seconds = time.perf_counter() - start

    # N = depth: recursive is the ResNet's gradient; backsolve credits each layer's share to
    # the next layer (its reverse steps evaluate W(t) at the right end of each layer).
    node = NeuralODE.from_resnet(resnet, "constant")
    g_resnet = resnet_gradient(resnet, mse, x, y)
    per_layer = {}
    for adjoint in ("recursive", "backsolve"):
        g = node_gradient(node, mse, x, y, num_steps=DEPTH, adjoint=adjoint,
                          max_steps=max_steps)
        per_layer[adjoint] = np.linalg.norm(
            np.asarray(g.vector_field.layer_weights.weights), axis=(1, 2)).tolist()
    per_layer["resnet"] = np.linalg.norm(np.asarray(g_resnet.weights), axis=(1, 2)).tolist()

    return {
        "description": "relative gap ||g_backsolve - g_recursive|| / ||g_recursive|| of the "
                       "ResNet's piecewise-constant neural ODE, N explicit Euler steps",
        "config": {"in_size": IN_SIZE, "out_size": OUT_SIZE, "width": WIDTH, "depth": DEPTH,
                   "T": T, "activation": "tanh", "dtype": "float64", "seed": SEED,
                   "loss": "mean squared error, one sample", "solver": "euler",
                   "max_steps": max_steps},
        "num_steps": list(gap.num_steps),
        "gap": gap.gaps.tolist(),
        "rate": gap.rate,
        "field_gap": gap.field_gaps.tolist(),
        "field_rate": gap.field_rate,
        "gap_times_N": (gap.gaps * np.asarray(gap.num_steps)).tolist(),
        "per_layer_weight_grad_norm_at_N_equals_depth": per_layer,
        "seconds": seconds,
        "versions": {name: version(name) for name in
                     ("jax", "jaxlib", "diffrax", "equinox", "numpy", "matplotlib")}
        | {"python": sys.version.split()[0]},
        "machine": {"platform": platform.platform(), "machine": platform.machine(),
                    "processor": platform.processor(), "cpu_count": os.cpu_count(),
                    "jax_backend": jax.default_backend(),
                    "jax_devices": [str(d) for d in jax.devices()]},
    }


def plot(results: dict, path: Path) -> None:
    n = np.asarray(results["num_steps"], float)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.loglog(n, results["gap"], "o-", label=f"all parameters (rate {results['rate']:.3f})")
    ax.loglog(n, results["field_gap"], "s-",
              label=f"layer weights only (rate {results['field_rate']:.3f})")
    ref = results["gap"][0] * n[0] / n
    ax.loglog(n, ref, "k--", lw=0.8, label="slope -1")
    ax.set_xlabel("Euler steps N")
    ax.set_ylabel("relative gap, backsolve vs recursive")
    cfg = results["config"]
    ax.set_title(f"ResNet width {cfg['width']}, depth {cfg['depth']}, tanh: gradient gap")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    RESULTS.mkdir(parents=True, exist_ok=True)
    results = main()
    (RESULTS / "gradient_gap.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "gradient_gap.png")
