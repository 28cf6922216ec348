"""The default gradient flow against the optimizers people use: Adam (tuned), L-BFGS
(`optax.lbfgs`), Levenberg-Marquardt (`optimistix`), Adam then L-BFGS.

Tasks (`stiffnode.studies.optimizer_race.TASKS`): sinc(10x) regression (481 parameters),
a physics-informed Poisson problem (481), the digits classifier (1,210) and the seed's
Alpine02 ResNet (4,281). Per task and seed, Adam's learning rate is tuned on 1e-3..3e-2
over 2,000 full-batch updates; its best final loss is the target, and every method runs
from the same start to it, each in one compiled loop, timed after compilation (best of
two). Writes `benchmarks/results/flow_vs_optimizers/` (`race.json`, `table.md`,
`race_TASK.png`) as each task and seed finishes; a rerun resumes. Float64.

Run: `python benchmarks/flow_vs_optimizers.py [--tasks sinc ...] [--seeds 5] [--fresh]`.
"""

import jax

jax.config.update("jax_enable_x64", True)

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

from _common import RESULTS, environment  # noqa: E402
from stiffnode.studies.optimizer_race import TASKS, run_race  # noqa: E402

OUT = Path(RESULTS) / "flow_vs_optimizers"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--fresh", action="store_true", help="discard earlier results")
    args = parser.parse_args()
    if args.fresh and OUT.exists():
        shutil.rmtree(OUT)
    record = run_race(OUT, tasks=args.tasks, seeds=range(args.seeds))
    record["environment"] = environment()
    (OUT / "race.json").write_text(json.dumps(record, indent=1))
    print((OUT / "table.md").read_text())


if __name__ == "__main__":
    main()
