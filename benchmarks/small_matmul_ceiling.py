"""The ceiling XLA:CPU puts on the seed-sized study: how fast its products run with nothing else.

The study (`stiffness_penalty.py`) trains 25 trials of a width-50, depth-16 tanh ResNet on
minibatches of 20, trials vmapped and spread over the CPU devices (one per core). Each layer
is a batched product `(trials, 20, 50) @ (trials, 50, 50)`. This script times, in one run and
after compilation, a chain of 16 such products and nothing else, on the same devices and
sharding, against a 2048 x 2048 float32 product (the "large-matmul rate" of issue 3's 30%
target, `_common.matmul_rate`; the larger of its values before and after):

- `bare`: `h <- h + 0.01 W h` (the products and an add);
- `tanh`: `h <- h + 0.1 tanh(W h)` (a ResNet forward pass without input/output layers);
- `tanh fwd+bwd`: its gradient with respect to the weights (flops counted as 3x forward).

A training step (forward, backward, Adam, reduce-on-plateau, minibatch gathers) cannot run
faster than `tanh fwd+bwd`. Rows per product 20 (the study's batch), 40 and 60 show how the
rate grows with the product size. Writes `results/small_matmul_ceiling.json`, with the rate
the study would need to finish its three models in 20 minutes (from
`results/stiffness_penalty.json`'s flop count).
"""

import json
import os
import statistics
import time

import jax

jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from _common import RESULTS, environment, matmul_rate  # noqa: E402

TRIALS, WIDTH, DEPTH = 25, 50, 16
ROWS = (20, 40, 60)
REPEATS = 7
AMORTISED_FLOPS = 7 / 3  # RES stiff's step in plain steps (stiffness_penalty.py)


def rate(fn, args, flops: float, reps: int) -> float:
    """flop/s of `fn(*args)` after compilation: median of `REPEATS` rounds of `reps` calls."""
    jax.block_until_ready(fn(*args))
    rounds = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(reps):
            out = fn(*args)
        jax.block_until_ready(out)
        rounds.append((time.perf_counter() - start) / reps)
    return flops / statistics.median(rounds)


def chain(step):
    def run(h, W):
        return jax.lax.scan(lambda h, _: (step(h, W), None), h, None, length=DEPTH)[0]

    return run


def bare(h, W):
    return h + 0.01 * jnp.einsum("tbw,tvw->tbv", h, W)


def tanh(h, W):
    return h + 0.1 * jnp.tanh(jnp.einsum("tbw,tvw->tbv", h, W))


def main() -> None:
    devices = jax.devices()
    trials = -(-TRIALS // len(devices)) * len(devices)  # padded as train_trials pads
    sharding = NamedSharding(Mesh(np.array(devices), ("trials",)), P("trials"))
    big_rate_before = matmul_rate()

    forward_tanh = chain(tanh)
    grad_tanh = jax.jit(jax.grad(lambda W, h: jnp.sum(forward_tanh(h, W))))
    products = {}
    for rows in ROWS:
        k_h, k_w = jax.random.split(jax.random.key(rows))
        h = jax.device_put(jax.random.normal(k_h, (trials, rows, WIDTH), jnp.float32), sharding)
        W = jax.device_put(
            jax.random.normal(k_w, (trials, WIDTH, WIDTH), jnp.float32) / WIDTH, sharding
        )
        flops = trials * DEPTH * 2 * rows * WIDTH * WIDTH
        products[str(rows)] = {
            "bare": rate(jax.jit(chain(bare)), (h, W), flops, reps=200),
            "tanh": rate(jax.jit(forward_tanh), (h, W), flops, reps=200),
            "tanh fwd+bwd": rate(grad_tanh, (W, h), 3 * flops, reps=100),
        }
    big_rate_after = matmul_rate()
    big_rate = max(big_rate_before, big_rate_after)  # as stiffness_penalty.py

    record = {
        "benchmark": "small_matmul_ceiling",
        "sizes": {"trials": TRIALS, "trials_padded": trials, "width": WIDTH, "depth": DEPTH,
                  "rows": list(ROWS), "dtype": "float32", "devices": len(devices)},
        "large_matmul_flop_rate": {"before": big_rate_before, "after": big_rate_after},
        "flop_rate": products,
        "fraction_of_large_matmul_rate": {
            rows: {k: v / big_rate for k, v in r.items()} for rows, r in products.items()
        },
    }
    study_path = os.path.join(RESULTS, "stiffness_penalty.json")
    if os.path.exists(study_path):
        with open(study_path) as f:
            study = json.load(f)
        per_epoch = study["flop_rate"]["plain_study_flops_per_epoch_all_trials"]
        epochs = study["sizes"]["epochs"]
        total = per_epoch * epochs * (2 + AMORTISED_FLOPS)  # RES, RES L2, RES stiff
        record["study_in_20_min"] = {
            "flops": total,
            "needed_flop_rate": total / 1200,
            "needed_fraction_of_large_matmul_rate": total / 1200 / big_rate,
            "needed_over_tanh_fwd_bwd_rate_at_20_rows": total / 1200
            / products["20"]["tanh fwd+bwd"],
            "note": "plain-study flops per epoch from stiffness_penalty.json (evaluation "
                    "included) x epochs x (RES + RES L2 + 7/3 for RES stiff's amortised step)",
        }
    record |= environment()
    with open(os.path.join(RESULTS, "small_matmul_ceiling.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps({k: record[k] for k in ("fraction_of_large_matmul_rate",
                                             "study_in_20_min") if k in record}, indent=1))


if __name__ == "__main__":
    main()
