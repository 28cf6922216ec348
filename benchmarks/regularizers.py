"""Regularised neural ODEs: solve cost of the trained model, training time, test error.

Part 1. A neural ODE classifier on two moons (labels: which moon). `x -> Linear(2, 4)`, then
`dh/dt = MLP([h, t])` (width 32, depth 2, tanh) on `[0, 1]`, then `Linear(4, 1)` as a logit;
the whole batch is one ODE state. Trained full-batch (512 points, noise 0.2) for a fixed
number of Adam steps with an adaptive Tsit5 solve (rtol = atol = 1e-4, gradients by
recursive checkpointing), once per variant, same initialisation and data:

- `none`: binary cross-entropy only;
- `rnode`: + 0.01 kinetic + 0.01 Jacobian Frobenius (Hutchinson), both per sample, as in
  Finlay et al. 2020;
- `steer`: end time `t1 ~ U[0.75, 1.25]` during training (Ghosh et al. 2020);
- `error`: + w_E sum_j E_j |h_j| (Pal et al. 2021), `stiffness`: + w_S sum_j rho_j (Pal);
- `proxy`: + w_P sum_j ||J v_K|| |h_j| (power-iteration spectral proxy at each step).

Recorded per variant: training wall time (after compilation; compile time separately),
the trained model's adaptive solve on 2,000 test points at the training tolerances (NFE,
accepted/rejected steps, median wall time), and its test error (misclassified fraction).
Ratios are against `none`. The test errors are reported next to them: the comparison is at
equal test error only where they agree within the stated tolerance (1 percentage point).

Part 2. CNF training-step time, Hutchinson vs exact trace, dimension d = 2 .. 64: one Adam
step of maximum likelihood on a batch of 64 standard-normal-ish samples, `MLP([z, t])`
(width 64, depth 2), 8 fixed Tsit5 steps (equal work per solve for both estimators).

Writes `benchmarks/results/regularizers.json` and `.png`.
Run: `.venv/bin/python benchmarks/regularizers.py` (about 8 minutes on 2 CPU cores).
"""

import json
import os
import statistics
import time

import equinox as eqx  # noqa: E402
import jax
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import optax  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import stiffnode as sn  # noqa: E402
from _common import RESULTS, environment  # noqa: E402
from stiffnode import cnf, regularizers  # noqa: E402

WIDTH, DEPTH, HIDDEN = 32, 2, 4
TRAIN_STEPS, N_TRAIN, N_TEST, NOISE = 300, 512, 2000, 0.2
TOL = dict(rtol=1e-4, atol=1e-4)
PER_SAMPLE = ("kinetic", "frobenius")  # integrals over the batch state: divided by its size
MAX_STEPS = 1024
EQUAL_ERROR_TOL = 0.01
VARIANTS = {
    "none": ({}, {}),
    "rnode": (dict(kinetic=True, frobenius="hutchinson"), {"kinetic": 0.01, "frobenius": 0.01}),
    "steer": ({}, {}),
    "error": (dict(error=True), {"error": 0.3}),
    "stiffness": (dict(stiffness=True), {"stiffness": 0.01}),
    "proxy": (dict(proxy="spectral"), {"proxy": 0.003}),
}
STEER_HALF_WIDTH = 0.25
CNF_DIMS = (2, 4, 8, 16, 32, 64)


class BatchField(eqx.Module):
    """`f(t, H)` applying one `MLP([h, t])` to each row of the batch `H`."""

    field: sn.MLPVectorField

    def __call__(self, t, h, args=None):
        return jax.vmap(lambda row: self.field(t, row, args))(h)


class Classifier(eqx.Module):
    embed: eqx.nn.Linear
    field: BatchField
    head: eqx.nn.Linear

    def __init__(self, key):
        k1, k2, k3 = jax.random.split(key, 3)
        self.embed = eqx.nn.Linear(2, HIDDEN, key=k1)
        self.field = BatchField(sn.MLPVectorField(HIDDEN, WIDTH, DEPTH, key=k2))
        self.head = eqx.nn.Linear(HIDDEN, 1, key=k3)

    def logits(self, h):
        return jax.vmap(self.head)(h)[:, 0]


def moons_with_labels(key, n):
    k_theta, k_moon, k_noise = jax.random.split(key, 3)
    theta = jax.random.uniform(k_theta, (n,), maxval=jnp.pi)
    upper = jax.random.bernoulli(k_moon, 0.5, (n,))
    x = jnp.where(upper, jnp.cos(theta), 1.0 - jnp.cos(theta))
    y = jnp.where(upper, jnp.sin(theta), 0.5 - jnp.sin(theta))
    points = jnp.stack([x, y], -1) + NOISE * jax.random.normal(k_noise, (n, 2))
    return points, upper.astype(jnp.float32)


def forward(model, x, options, key=None, end_time=1.0):
    h0 = jax.vmap(model.embed)(x)
    out = regularizers.regularized_solve(
        model.field, h0, 0.0, end_time, key=key, max_steps=MAX_STEPS, **TOL, **options
    )
    return model.logits(out.ys[-1]), out.penalties, out.stats


def train(name, model, x, y, key):
    options, weights = VARIANTS[name]
    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimizer = optax.adam(3e-3)

    def loss(p, k):
        m = eqx.combine(p, static)
        k_probe, k_time = jax.random.split(k)
        t1 = 1.0
        if name == "steer":
            t1 = regularizers.random_end_time(k_time, 1.0, STEER_HALF_WIDTH)
        logits, penalties, _ = forward(m, x, options, k_probe, t1)
        penalties = {k: v / x.shape[0] if k in PER_SAMPLE else v for k, v in penalties.items()}
        bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y))
        return bce + (regularizers.penalty(penalties, weights) if weights else 0.0)

    @eqx.filter_jit
    def step(p, state, k):
        value, grads = jax.value_and_grad(loss)(p, k)
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, value

    state = optimizer.init(params)
    start = time.perf_counter()
    jax.block_until_ready(step.lower(params, state, key).compile())
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(TRAIN_STEPS):
        key, k = jax.random.split(key)
        params, state, value = step(params, state, k)
    jax.block_until_ready(params)
    return eqx.combine(params, static), compile_s, time.perf_counter() - start, float(value)


def evaluate(model, x, y):
    predict = eqx.filter_jit(lambda m, x: forward(m, x, {}))
    logits, _, stats = predict(model, x)
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(predict(model, x))
        runs.append(time.perf_counter() - start)
    error = float(jnp.mean((logits > 0) != (y > 0.5)))
    return {
        "test_error": error,
        "nfe": int(stats["num_vf_evals"]),
        "accepted_steps": int(stats["num_accepted_steps"]),
        "rejected_steps": int(stats["num_rejected_steps"]),
        "predict_s": statistics.median(runs),
    }


def classifier_study():
    x, y = moons_with_labels(jax.random.key(0), N_TRAIN)
    x_test, y_test = moons_with_labels(jax.random.key(1), N_TEST)
    init = Classifier(jax.random.key(2))
    rows = {}
    for name in VARIANTS:
        model, compile_s, train_s, final_loss = train(name, init, x, y, jax.random.key(3))
        rows[name] = {"train_s": train_s, "compile_s": compile_s, "final_loss": final_loss}
        rows[name] |= evaluate(model, x_test, y_test)
        print(name, rows[name], flush=True)
    base = rows["none"]
    for row in rows.values():
        row["nfe_ratio"] = row["nfe"] / base["nfe"]
        row["predict_time_ratio"] = row["predict_s"] / base["predict_s"]
        row["train_time_ratio"] = row["train_s"] / base["train_s"]
        row["speedup_training"] = base["train_s"] / row["train_s"]
        row["equal_test_error"] = abs(row["test_error"] - base["test_error"]) <= EQUAL_ERROR_TOL
    return rows


def cnf_step_time(d, trace):
    field = sn.MLPVectorField(d, 64, 2, key=jax.random.key(0))
    flow = cnf.CNF(field, trace=trace)
    x = jax.random.normal(jax.random.key(1), (64, d)) * 0.5 + 1.0
    params, static = eqx.partition(flow, eqx.is_inexact_array)
    optimizer = optax.adam(1e-3)
    opts = dict(solver="tsit5", dt0=1.0 / 8, stepsize_controller="constant", max_steps=8)

    @eqx.filter_jit
    def step(p, state, k):
        value, grads = jax.value_and_grad(lambda q: cnf.nll(eqx.combine(q, static), x, k, **opts))(
            p
        )
        updates, state = optimizer.update(grads, state, p)
        return optax.apply_updates(p, updates), state, value

    state, key = optimizer.init(params), jax.random.key(2)
    start = time.perf_counter()
    jax.block_until_ready(step(params, state, key))
    compile_s = time.perf_counter() - start
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(step(params, state, key))
        runs.append(time.perf_counter() - start)
    return {"step_s": statistics.median(runs), "compile_s": compile_s}


def cnf_study():
    out = {"dims": list(CNF_DIMS), "exact": [], "hutchinson": []}
    for d in CNF_DIMS:
        for trace in ("exact", "hutchinson"):
            out[trace].append(cnf_step_time(d, trace))
        print("cnf", d, out["exact"][-1], out["hutchinson"][-1], flush=True)
    ratios = [
        e["step_s"] / h["step_s"] for e, h in zip(out["exact"], out["hutchinson"], strict=True)
    ]
    out["exact_over_hutchinson"] = ratios
    faster = [d for d, r in zip(CNF_DIMS, ratios, strict=True) if r > 1]
    out["hutchinson_faster_from_dim"] = faster[0] if faster else None
    return out


def plot(rows, cnf_rows, path):
    names = list(rows)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].bar(names, [rows[n]["nfe_ratio"] for n in names])
    axes[0].axhspan(0.55, 0.75, color="g", alpha=0.2, label="Pal et al. NFE 0.55-0.75x")
    axes[0].set(ylabel="NFE / unregularised", title="trained model's adaptive solve")
    axes[1].bar(names, [rows[n]["speedup_training"] for n in names])
    axes[1].axhline(2.8, color="g", ls="--", label="RNODE 2.8x")
    axes[1].set(ylabel="training speed-up vs unregularised", title="training wall time")
    for ax in axes[:2]:
        ax.legend()
        ax.tick_params(axis="x", rotation=30)
    dims = cnf_rows["dims"]
    for trace in ("exact", "hutchinson"):
        axes[2].loglog(
            dims, [r["step_s"] * 1e3 for r in cnf_rows[trace]], "o-", label=trace, base=2
        )
    axes[2].set(
        xlabel="dimension d", ylabel="ms per training step", title="CNF: exact trace vs Hutchinson"
    )
    axes[2].legend()
    axes[2].grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    start = time.perf_counter()
    rows = classifier_study()
    cnf_rows = cnf_study()
    result = {
        "description": "neural ODE classifier (two moons) trained with and without each "
        "regulariser: trained model's adaptive solve (NFE, time), training "
        "time, test error; CNF step time exact vs Hutchinson trace vs d",
        "config": {
            "width": WIDTH,
            "depth": DEPTH,
            "hidden": HIDDEN,
            "train_steps": TRAIN_STEPS,
            "n_train": N_TRAIN,
            "n_test": N_TEST,
            "noise": NOISE,
            "tolerances": TOL,
            "solver": "tsit5 (PID)",
            "optimizer": "adam 3e-3, full batch",
            "max_steps": MAX_STEPS,
            "weights": {n: w for n, (_, w) in VARIANTS.items()},
            "steer_end_time": [1 - STEER_HALF_WIDTH, 1 + STEER_HALF_WIDTH],
            "equal_test_error_tolerance": EQUAL_ERROR_TOL,
        },
        "literature_targets": {
            "rnode_training_speedup": 2.8,
            "pal_prediction_time_ratio": 0.5,
            "pal_nfe_ratio": [0.55, 0.75],
        },
        "classifier": rows,
        "cnf_step_time": cnf_rows,
        "total_seconds": time.perf_counter() - start,
        "environment": environment(),
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "regularizers.json"), "w") as f:
        json.dump(result, f, indent=2)
    plot(rows, cnf_rows, os.path.join(RESULTS, "regularizers.png"))
    return result


if __name__ == "__main__":
    main()
