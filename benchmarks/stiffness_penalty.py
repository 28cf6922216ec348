"""What a stiffness penalty costs, and the seed-sized study's time, on this machine.

In one run, after compilation (compile times reported separately), at the seed's climate-case
sizes (ResNet width 50, depth 16, tanh, minibatches of 20, float32, the POLLU ensemble):

1. each penalised training step's time over the plain step's, per proxy (dense Gelfand,
   dense power iteration, amortised power iteration, singular values, Frobenius), as the
   median of interleaved repeats (the machine is shared; interleaving keeps the ratios fair);
2. how closely the amortised estimate tracks the exact spectral radius (and the dense
   Gelfand value) after 20, 100 and 300 epochs of training with it;
3. the seed-sized study (3 models x 25 trials x 1,000 epochs x 100 minibatches, RES stiff
   with the amortised penalty): each model's 25-trial vmapped program timed, after
   compilation, on the study's own chunk (10 epochs and one evaluation), with the trials
   spread over the CPU devices (one per core), RES also on one device; extrapolated to
   1,000 epochs;
4. the plain study's achieved floating-point rate (analytic flop count of the training step
   and evaluation) as a fraction of this machine's measured large-matmul rate.

Writes `benchmarks/results/stiffness_penalty.json` and `.png`.
Run: `.venv/bin/python benchmarks/stiffness_penalty.py [--quick]`.
"""

import argparse
import json
import os
import statistics
import sys
import time

import jax

# One CPU device per core: the study's trials are spread over them (`trials.train_trials`).
jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import stiffnode as sn  # noqa: E402
from _common import RESULTS, environment, matmul_rate  # noqa: E402
from stiffnode import stiffness as st  # noqa: E402
from stiffnode import trials as tr  # noqa: E402
from stiffnode.data.ensembles import pollu_ensemble  # noqa: E402
from stiffnode.studies.seed_resnet import SEED_TABLE  # noqa: E402

WIDTH, DEPTH, BATCH, NUM_BATCHES, EPOCHS, TRIALS = 50, 16, 20, 100, 1000, 25
PROXIES = {  # benchmark label -> trials penalty name
    "dense Gelfand (10 squarings)": "gelfand",
    "dense power iteration (20 its)": "power",
    "amortised power iteration (1 it)": "amortised",
    "singular values (ratio)": "singular",
    "Frobenius (structured)": "frobenius",
}
CHEAP = ("none", "amortised", "frobenius")
SEED_SECONDS = {model: row["wall_time_s"] for model, row in SEED_TABLE.items()}  # the seed's


def _timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def step_ratios(data, steps_per_call, rounds):
    """Median time per step of each penalty's training step, timed in interleaved rounds."""
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    model = sn.ResNet(x.shape[1], y.shape[1], WIDTH, DEPTH, key=jax.random.key(0))
    runners, compile_s, steps = {}, {}, {}
    for label, penalty in {"plain": "none", **PROXIES}.items():
        # The dense proxies are 100-5000x slower: fewer steps per timed call.
        steps[label] = steps_per_call if penalty in CHEAP else max(2, steps_per_call // 10)
        n = steps[label]
        idx = jnp.arange(n * BATCH).reshape(n, BATCH) % x.shape[0]
        config = tr.TrainConfig(WIDTH, DEPTH, 1, BATCH, penalty=penalty, lam=1e-3)
        step, state = tr.penalised_step_fn(config, model, x.shape[0])

        @jax.jit
        def run(state, step=step, idx=idx):
            def body(s, i):
                return step(s, x[i], y[i], i), None

            return jax.lax.scan(body, state, idx)[0]

        compile_s[label] = _timed(run, state)
        runners[label] = (run, state)
    times = {label: [] for label in runners}
    for _ in range(rounds):
        for label, (run, state) in runners.items():
            times[label].append(_timed(run, state) / steps[label])
    per_step = {k: statistics.median(v) for k, v in times.items()}
    return {
        "plain_step_s": per_step["plain"],
        "step_s": per_step,
        "ratio_to_plain": {k: v / per_step["plain"] for k, v in per_step.items() if k != "plain"},
        "compile_s": compile_s,
        "steps_per_call": steps,
        "rounds": rounds,
    }


def amortised_tracking(data, checkpoints):
    """Train with the amortised penalty; after each of `checkpoints` epochs compare its
    estimates (the stored vectors' Ritz radius) with the exact spectral radius (numpy's
    eigenvalues) and the dense Gelfand value on the first 256 training samples."""
    import equinox as eqx

    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    n = x.shape[0]
    model = sn.ResNet(x.shape[1], y.shape[1], WIDTH, DEPTH, key=jax.random.key(1))
    config = tr.TrainConfig(WIDTH, DEPTH, 1, BATCH, penalty="amortised", lam=1e-3)
    step, state = tr.penalised_step_fn(config, model, n)
    static = eqx.partition(model, eqx.is_inexact_array)[1]

    @jax.jit
    def epoch(state, key):
        perm = jax.random.permutation(key, n)[: (n // BATCH) * BATCH].reshape(-1, BATCH)
        return jax.lax.scan(lambda s, i: (step(s, x[i], y[i], i), None), state, perm)[0]

    out, done, m = [], 0, 256
    for target in checkpoints:
        for e in range(done, target):
            state = epoch(state, jax.random.key(100 + e))
        done = target
        params, _, vectors = state
        trained = eqx.combine(params, static)
        slopes = jax.vmap(st.layer_slopes, in_axes=(None, 0))(trained, x[:m])
        est, _ = st.amortised_spectral_radius(slopes, trained.weights, vectors[:m])
        est = np.asarray(est)
        J = slopes[..., :, None] * trained.weights
        gelfand = np.asarray(st.spectral_radius_gelfand(J))
        exact = np.max(np.abs(np.linalg.eigvals(np.asarray(J, np.float64))), -1)
        rel = est / exact - 1
        total_rel = est.sum(-1) / exact.sum(-1) - 1
        out.append(
            {
                "epochs_trained": target,
                "samples": m,
                "per_layer_relative_error_vs_eig": {
                    "median_abs": float(np.median(np.abs(rel))),
                    "p90_abs": float(np.quantile(np.abs(rel), 0.9)),
                    "fraction_within_1pct": float(np.mean(np.abs(rel) < 0.01)),
                    "fraction_within_5pct": float(np.mean(np.abs(rel) < 0.05)),
                },
                "per_sample_sum_over_layers_relative_error_vs_eig": {
                    "median_abs": float(np.median(np.abs(total_rel))),
                    "p90_abs": float(np.quantile(np.abs(total_rel), 0.9)),
                },
                "gelfand_relative_error_vs_eig_median": float(
                    np.median(np.abs(gelfand / exact - 1))
                ),
                "mean_sum_over_layers": {
                    "amortised": float(est.sum(-1).mean()),
                    "gelfand": float(gelfand.sum(-1).mean()),
                    "eig": float(exact.sum(-1).mean()),
                },
            }
        )
    return out


def study_extrapolation(data, trials, chunk_epochs, rounds, devices, models=None):
    """Time each model's trial-vmapped program (the study's: `chunk_epochs` epochs and one
    evaluation, the trials spread over `devices`) after compilation; extrapolate to 1k epochs."""
    from stiffnode.studies.seed_resnet import MODELS

    x, y, xt, yt = (jnp.asarray(a, jnp.float32) for a in data)
    out = {}
    for model in models or MODELS:
        penalty, lam = MODELS[model]
        config = tr.TrainConfig(
            WIDTH,
            DEPTH,
            chunk_epochs,
            BATCH,
            num_batches=NUM_BATCHES,
            penalty=penalty,
            lam=lam,
            eval_every=chunk_epochs,
        )
        states, statics = zip(
            *(
                tr._init_one(config, x.shape[1], y.shape[1], x.shape[0], jnp.float32, s)
                for s in range(trials)
            ),
            strict=True,
        )
        state = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *states)
        state = tr._spread(state, devices, trials)
        run = tr._build(config, statics[0], x.shape[0])
        compile_s = _timed(run, state, x, y, xt, yt)
        chunk_s = statistics.median(_timed(run, state, x, y, xt, yt) for _ in range(rounds))
        per_epoch = chunk_s / chunk_epochs
        out[model] = {
            "penalty": penalty,
            "compile_s": compile_s,
            "measured_epochs": chunk_epochs * rounds,
            "epoch_s_all_trials": per_epoch,
            "extrapolated_training_s_all_trials": per_epoch * EPOCHS,
            "extrapolated_s_per_trial": per_epoch * EPOCHS / trials,
            "seed_s_per_trial": SEED_SECONDS[model],
            "speedup_vs_seed_per_trial": SEED_SECONDS[model] / (per_epoch * EPOCHS / trials),
        }
    total = sum(v["extrapolated_training_s_all_trials"] + v["compile_s"] for v in out.values())
    return {
        "models": out,
        "extrapolated_total_s": total,
        "trials": trials,
        "epochs": EPOCHS,
        "chunk_epochs": chunk_epochs,
        "devices": len(devices),
    }


def plain_flops_per_epoch(n_train, n_test, in_size, out_size, eval_every, proxy_samples=16):
    """Analytic flops of one plain epoch, per trial: the training steps, and the evaluation
    made every `eval_every` epochs (forward passes on the train and test sets; the history's
    dense Gelfand radius: 10 squarings of each of `proxy_samples` x depth layer Jacobians)."""
    layer = 2 * WIDTH * WIDTH
    io = 2 * WIDTH * (in_size + out_size)
    fwd = DEPTH * layer + io  # one sample's forward pass (multiply-adds x 2)
    step = BATCH * 3 * fwd  # forward + backward (input and weight gradients)
    gelfand = proxy_samples * DEPTH * 10 * 2 * WIDTH**3
    eval_ = (n_train + n_test) * fwd + gelfand
    return NUM_BATCHES * step + eval_ / eval_every


def main(quick: bool = False) -> dict:
    from stiffnode.studies.seed_resnet import TASKS

    devices = jax.devices()
    data = pollu_ensemble(0, progress=True)
    start = time.perf_counter()
    ratios = step_ratios(data, steps_per_call=20 if quick else 50, rounds=3 if quick else 7)
    tracking = amortised_tracking(data, (1, 2) if quick else (20, 100, 300))
    rate = matmul_rate()
    chunk = 1 if quick else TASKS["pollu"]["eval_every"]
    rounds = 1 if quick else 2
    study = study_extrapolation(data, TRIALS, chunk, rounds, devices)
    one_device = study_extrapolation(data, TRIALS, chunk, rounds, devices[:1], models=["RES"])
    rate_after = matmul_rate()
    res = study["models"]["RES"]
    flops = plain_flops_per_epoch(1996, 500, 15, 10, chunk) * TRIALS
    achieved = flops / res["epoch_s_all_trials"]
    results = {
        "benchmark": "stiffness_penalty",
        "sizes": {
            "width": WIDTH,
            "depth": DEPTH,
            "batch": BATCH,
            "num_batches": NUM_BATCHES,
            "epochs": EPOCHS,
            "trials": TRIALS,
            "dtype": "float32",
            "data": "POLLU ensemble (15 inputs, 10 outputs, 1996 train / 500 test)",
        },
        "step_cost": ratios,
        "amortised_tracking": tracking,
        "study": study,
        "study_RES_on_one_device": one_device["models"]["RES"],
        "flop_rate": {
            "plain_study_flops_per_epoch_all_trials": flops,
            "plain_study_flop_rate": achieved,
            "large_matmul_flop_rate_before": rate,
            "large_matmul_flop_rate_after": rate_after,
            "fraction_of_matmul_rate": achieved / max(rate, rate_after),
            "devices": len(devices),
            "note": "analytic count: 2 w^2 per layer and sample forward, x3 with backward, "
            "plus the evaluation every eval_every epochs (train and test sets, dense Gelfand "
            "history proxy); the trials spread over all CPU devices (one per core); the "
            "matmul rate is a 2048x2048 float32 product on one device (all cores), median "
            "of 7, measured before and after",
        },
        "load_average": os.getloadavg(),
        "wall_s": time.perf_counter() - start,
        **environment(),
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "stiffness_penalty.json"), "w") as f:
        json.dump(results, f, indent=2)
    _plot(results)
    return results


def _plot(results):
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
    r = results["step_cost"]["ratio_to_plain"]
    labels = list(r)
    a.barh(labels, [r[k] for k in labels], color="tab:blue")
    a.axvline(2, color="k", ls="--", lw=1, label="target 2x")
    a.set_xscale("log")
    a.set_xlabel("penalised step time / plain step time")
    a.set_title("stiffness penalty cost per training step (width 50, depth 16, batch 20)")
    for i, k in enumerate(labels):
        a.text(r[k], i, f" {r[k]:.1f}x", va="center")
    a.legend()
    s = results["study"]["models"]
    names = list(s)
    ours = [s[m]["extrapolated_s_per_trial"] for m in names]
    seed = [s[m]["seed_s_per_trial"] for m in names]
    xs = np.arange(len(names))
    b.bar(xs - 0.2, seed, 0.4, label="seed (reported)")
    b.bar(xs + 0.2, ours, 0.4, label="stiffnode (extrapolated, 25 trials vmapped)")
    b.set_yscale("log")
    b.set_xticks(xs, names)
    b.set_ylabel("seconds per trial (1k epochs)")
    b.set_title("seed-sized study: wall time per trial")
    b.legend()
    fig.savefig(os.path.join(RESULTS, "stiffness_penalty.png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (a smoke test)")
    res = main(parser.parse_args().quick)
    print(
        json.dumps({k: res[k] for k in ("step_cost", "amortised_tracking", "flop_rate")}, indent=2)
    )
    print(
        json.dumps(
            {
                m: {k: v[k] for k in ("extrapolated_s_per_trial", "compile_s")}
                for m, v in res["study"]["models"].items()
            },
            indent=2,
        )
    )
    print("extrapolated study total s:", res["study"]["extrapolated_total_s"])
