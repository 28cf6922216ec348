"""Every benchmark's main section, one after another, on whatever device JAX has: one
command for a GPU machine.

`python benchmarks/all.py --quick` runs a small version of each (seconds to a minute each,
about 10 minutes in all on a 2-core CPU) and writes its JSON/PNG under
`benchmarks/results/quick-<backend>/`; without `--quick` the benchmarks run as they are
(hours on CPU), their results under `benchmarks/results/` on CPU and
`benchmarks/results/<backend>/` on another device, beside the CPU ones. Each benchmark runs
in a process of its own (`STIFFNODE_RESULTS` tells it where to write; `_common.RESULTS`),
with a time limit; a failure is recorded and the next one runs. `all.json` in that folder
records each command, its exit status, its seconds and its output's tail, rewritten after
each. The anchors (diffsol, CVODE) need `pip install -e ".[bench]"`.

Run: `python benchmarks/all.py [--quick] [--only NAME ...] [--timeout SECONDS]`.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from stiffnode.checkpoints import write_text

HERE = Path(__file__).resolve().parent

# (name, arguments of the full run, arguments of the quick run)
BENCHMARKS = (
    ("stiff_solvers_single", ["stiff_solvers.py", "--only", "single"],
     ["stiff_solvers.py", "--only", "single", "--repeats", "3"]),
    ("stiff_solvers_ensembles", ["stiff_solvers.py", "--only", "ensembles"],
     ["stiff_solvers.py", "--only", "ensembles", "--repeats", "1", "--ensemble-size", "128"]),
    ("stiff_kinetics", ["stiff_kinetics.py"],
     ["stiff_kinetics.py", "--training-minutes", "0", "--problems", "robertson_rates", "--solvers",
      "bdf", "rodas5p", "--no-anchor", "--no-memory"]),
    ("auto_switching", ["auto_switching.py"],
     ["auto_switching.py", "--problems", "vdp_1e3", "robertson", "hires", "--repeats", "2",
      "--only", "floor"]),
    ("flow_vs_optimizers", ["flow_vs_optimizers.py"],
     ["flow_vs_optimizers.py", "--tasks", "sinc", "--seeds", "1", "--fresh"]),
    ("stiffness_penalty", ["stiffness_penalty.py"], ["stiffness_penalty.py", "--quick"]),
    ("xla_defaults", ["xla_defaults.py"],
     ["xla_defaults.py", "--repeats", "3", "--rounds", "1"]),
)  # fmt: skip


def results_dir(quick: bool) -> Path:
    """Where this run writes: the backend asked of JAX in a process of its own (this one
    starts no JAX backend)."""
    probe = "import jax; print(jax.default_backend())"
    backend = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]  # fmt: skip
    if quick:
        return HERE / "results" / f"quick-{backend}"
    return HERE / "results" if backend == "cpu" else HERE / "results" / backend


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small versions (~10 min)")
    parser.add_argument("--only", nargs="+", choices=[b[0] for b in BENCHMARKS])
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds per benchmark (default 600 quick, none full)")  # fmt: skip
    args = parser.parse_args()
    out = results_dir(args.quick)
    out.mkdir(parents=True, exist_ok=True)
    timeout = args.timeout or (600 if args.quick else None)
    record = {"quick": args.quick, "results": str(out), "runs": {}}
    env = os.environ | {"STIFFNODE_RESULTS": str(out)}
    for name, full, quick in BENCHMARKS:
        if args.only and name not in args.only:
            continue
        command = [sys.executable, *(quick if args.quick else full)]
        print(f"== {name}: {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=HERE, env=env, capture_output=True, text=True,
                                  timeout=timeout)  # fmt: skip
            status, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as e:
            status, output = "timeout", f"{e.stdout or ''}{e.stderr or ''}"
            output = output if isinstance(output, str) else output.decode(errors="replace")
        seconds = time.perf_counter() - start
        record["runs"][name] = {"command": command[1:], "status": status,
                                "seconds": seconds, "output_tail": output[-2000:]}  # fmt: skip
        write_text(out / "all.json", json.dumps(record, indent=1))
        print(f"   {'ok' if status == 0 else f'FAILED ({status})'} in {seconds:.0f} s",
              flush=True)  # fmt: skip
    failed = [n for n, r in record["runs"].items() if r["status"] != 0]
    print(f"wrote {out / 'all.json'}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
