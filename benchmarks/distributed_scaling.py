"""The study over several JAX processes, side by side in one run on this machine: the
seed-sized POLLU study's RES model (25 trials, width 50, depth 16) as 1 process x 1 CPU
device, 1 process x 2 CPU devices and 2 processes x 1 CPU device (`stiffnode launch -n 2`,
gloo collectives over 127.0.0.1), each at two epoch counts.

Measured: each command's wall time (process start, data, compilation, training: what a user
waits for) at E1 and E2 epochs; the steady training time per epoch `(wall(E2) - wall(E1)) /
(E2 - E1)` (start-up and compilation cancel) and the fixed cost `wall(E1) - E1 x per epoch`;
the summaries' agreement; the cost of the distributed runtime (2 processes x 1 device over
1 process x 2 devices, the same cores; target within 1.1x) and the parallel efficiency
from 1 to 2 processes (`T_1 / (2 T_2)` per epoch, the same 2 cores counted).

Then the weak-scaling model for 8, 64 and 512 hosts (one such device each), written out
from those figures. Trials are independent, so a study sends nothing per epoch: per record
(every `eval_every` epochs) every process receives every trial's ER and GE; at the end of
a group every trial's parameters (to write the same trial files everywhere); checkpoints are
written by each process for its own trials (no traffic). Time: `fixed + ceil(trials /
hosts) x epochs x per-trial epoch` (per-trial time taken as linear in the trials per
device). The data-parallel gradient flow, by contrast, all-reduces one gradient (and each
Hessian-vector product) per evaluation: `2 (H - 1) / H x 8 P` bytes per host (ring
all-reduce, float64, P parameters).

Run: `python benchmarks/distributed_scaling.py [--epochs 50 150]`; writes
`results/distributed_scaling.json`. Each run starts fresh processes with its own output
directory; the POLLU ensemble is solved once beforehand into the cache.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, environment

OUT = Path(RESULTS) / "distributed_scaling.json"
TRIALS = 25
HOSTS = (8, 64, 512)
N_TRAIN = 1996  # the POLLU ensemble's training members (`pollu_ensemble`'s default)
SEED_TRIAL_S = 17903  # the seed's median RES wall time per trial (its climate table), s

CONFIGS = {
    "1 process x 1 device": ["study", "--cpu-devices", "1"],
    "1 process x 2 devices": ["study", "--cpu-devices", "2"],
    "2 processes x 1 device": ["launch", "-n", "2", "--", "study"],
}


def _run(config: list[str], epochs: int, out: Path) -> dict:
    # (records every 10 epochs, the task's setting: their gathers are part of the epoch time)
    study = ["--task", "pollu", "--models", "RES", "--trials", str(TRIALS), "--epochs",
             str(epochs), "--quiet", "--out", str(out)]  # fmt: skip
    command = [sys.executable, "-m", "stiffnode", *config, *study]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())["RES"]
    return {"command": "stiffnode " + " ".join(config + study[:-1]) + " DIR",
            "command_wall_s": wall, "summary": summary}  # fmt: skip


def _state_bytes() -> dict[str, int]:
    """Per model, the bytes of one trial's training state on the POLLU task (parameters,
    Adam's moments, the plateau scale, the amortised power iteration's vectors for RES
    stiff): what every process gathers per trial at a checkpoint and at the end."""
    import jax
    import jax.numpy as jnp

    from stiffnode.studies.seed_resnet import MODELS, TASKS
    from stiffnode.training.trials import TrainConfig, _init_one

    settings, sizes = TASKS["pollu"], {}
    for model, (penalty, lam) in MODELS.items():
        penalty = "amortised" if model == "RES stiff" else penalty  # (the study's default)
        sizes_of = {k: settings[k] for k in ("width", "depth", "batch_size", "num_batches")}
        config = TrainConfig(**sizes_of, epochs=1, penalty=penalty, lam=lam)
        state, _ = _init_one(config, 15, 10, N_TRAIN, jnp.float32, 0)
        sizes[model] = sum(x.nbytes for x in jax.tree.leaves(state) if hasattr(x, "nbytes"))
    return sizes


def _parameters() -> int:
    import equinox as eqx
    import jax
    import numpy as np

    from stiffnode.models import ResNet

    model = ResNet(15, 10, 50, 16, key=jax.random.key(0))
    return sum(np.size(x) for x in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))


RECORD_METRICS = 7  # per trial per record: loss, ER, GE, l2_norm, lr, frobenius, gelfand


def weak_scaling(epoch_s: float, fixed_s: float, params: int, state_bytes: dict) -> dict:
    """The seed study (75 trials, 1,000 epochs, records every 10) and a weak-scaling study
    (25 trials per host) on H hosts of one device each, from this machine's per-trial
    epoch time `epoch_s` (one device) and fixed cost `fixed_s`. Traffic as the study runs
    (`train_trials(keep_models=False)`): every process receives every trial's record
    metrics (float32) and, at the end, final metrics (float64); no parameters."""
    from stiffnode.training.trials import FINAL_METRICS

    epochs, every, seed_trials = 1000, 10, 3 * TRIALS  # RES, RES L2, RES stiff
    record_bytes, final_bytes = 4 * RECORD_METRICS, 8 * len(FINAL_METRICS)
    rows = {}
    for hosts in HOSTS:
        weak_trials = hosts * TRIALS
        rows[str(hosts)] = {
            "seed_study_wall_s": fixed_s + math.ceil(seed_trials / hosts) * epochs * epoch_s,
            "seed_study_idle_hosts": max(0, hosts - seed_trials),
            "weak_wall_s": fixed_s + TRIALS * epochs * epoch_s,
            "traffic_per_epoch_bytes": 0,
            "weak_received_per_record_bytes_per_host": weak_trials * record_bytes,
            "weak_received_at_end_bytes_per_host": weak_trials * final_bytes,
            "weak_received_total_bytes_per_host": weak_trials
            * (record_bytes * (epochs // every) + final_bytes),
            "models_if_kept_bytes_per_host": weak_trials * 4 * params,
            "checkpoint_written_per_host_bytes": {
                model: TRIALS * size for model, size in state_bytes.items()
            },
            "flow_allreduce_bytes_per_host_per_evaluation": 2 * (hosts - 1) / hosts * 8 * params,
        }
    return rows


def model(record: dict) -> dict:
    """`record` with the model sizes and the weak-scaling model from its measurements."""
    one = record["configs"]["1 process x 1 device"]
    params, state_bytes = _parameters(), _state_bytes()
    record["model"] = {"parameters": params, "state_bytes_per_trial": state_bytes,
                       "trial_epoch_s_one_device": one["epoch_s"] / TRIALS,
                       "fixed_s": one["fixed_s"], "seed_per_trial_s": SEED_TRIAL_S}  # fmt: skip
    record["weak_scaling"] = weak_scaling(one["epoch_s"] / TRIALS, one["fixed_s"], params,
                                          state_bytes)  # fmt: skip
    return record


def main(epochs: tuple[int, int]) -> dict:
    from stiffnode.data.ensembles import pollu_ensemble

    pollu_ensemble()  # solved once into the cache, outside the timings
    e1, e2 = epochs
    record = {"environment": environment(), "load_average": os.getloadavg(), "trials": TRIALS,
              "epochs": list(epochs), "configs": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, config) in enumerate(CONFIGS.items()):
            runs = [_run(config, e, Path(tmp) / f"{i}_{e}") for e in epochs]
            epoch_s = (runs[1]["command_wall_s"] - runs[0]["command_wall_s"]) / (e2 - e1)
            record["configs"][name] = {
                "runs": runs,
                "epoch_s": epoch_s,
                "fixed_s": runs[0]["command_wall_s"] - e1 * epoch_s,
            }
            print(name, {k: v for k, v in record["configs"][name].items() if k != "runs"},
                  [r["command_wall_s"] for r in runs], flush=True)  # fmt: skip
    configs = record["configs"]
    first = configs["1 process x 1 device"]["runs"][1]["summary"]
    record["max_relative_summary_difference"] = {
        name: max(abs(c["runs"][1]["summary"][k] - first[k]) / abs(first[k])
                  for k in ("ER", "GE", "stiffness"))
        for name, c in configs.items()
    }  # fmt: skip
    two = configs["1 process x 2 devices"]["runs"][1]["summary"]
    procs = configs["2 processes x 1 device"]["runs"][1]["summary"]
    record["two_processes_equal_two_devices"] = all(two[k] == procs[k] for k in ("ER", "GE"))
    one, two_dev, two_proc = (configs[k]["epoch_s"] for k in CONFIGS)
    record["runtime_cost_2proc_over_1proc_2dev_per_epoch"] = two_proc / two_dev
    record["runtime_cost_2proc_over_1proc_2dev_command"] = (
        configs["2 processes x 1 device"]["runs"][1]["command_wall_s"]
        / configs["1 process x 2 devices"]["runs"][1]["command_wall_s"]
    )
    record["parallel_efficiency_1_to_2_processes"] = one / (2 * two_proc)
    model(record)
    OUT.write_text(json.dumps(record, indent=2))
    print(json.dumps({k: v for k, v in record.items() if k not in ("environment", "configs")},
                     indent=2))  # fmt: skip
    return record


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, nargs=2, default=(50, 150), metavar=("E1", "E2"))
    parser.add_argument("--model-only", action="store_true",
                        help="recompute the model from the measurements in the JSON")  # fmt: skip
    args = parser.parse_args()
    if args.model_only:
        OUT.write_text(json.dumps(model(json.loads(OUT.read_text())), indent=2))
    else:
        main(tuple(args.epochs))
