"""Several JAX processes (`stiffnode.distributed`): two local processes over gloo give the
study of one process with two devices."""

import json
import subprocess
import sys

import numpy as np

from stiffnode import distributed
from stiffnode.studies import seed_resnet

STUDY = ["study", "--task", "alpine02", "--trials", "2", "--epochs", "2", "--models", "RES",
         "--quiet"]  # fmt: skip


def test_two_processes_give_the_single_process_study(tmp_path):
    """`stiffnode launch -n 2 -- study ...`: each process trains one of the two trials on its
    one CPU device; the summary equals this process's (two CPU devices, conftest.py)."""
    out = tmp_path / "two"
    done = subprocess.run(
        [sys.executable, "-m", "stiffnode", "launch", "-n", "2", "--", *STUDY, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote") == 1  # process 0 reports, process 1 does not
    two = json.loads((out / "summary.json").read_text())
    one = seed_resnet.run_study(
        "alpine02", out=tmp_path / "one", trials=2, epochs=2, models=("RES",), progress=False
    )
    for key in ("ER", "GE", "stiffness"):
        # The same float32 programs on the same devices' shares: equal to round-off.
        np.testing.assert_allclose(two["RES"][key], one["RES"][key], rtol=1e-6, err_msg=key)
    assert sorted(p.name for p in (out / "trials" / "res").iterdir()) == [
        "trial_0000.npz",
        "trial_0001.npz",
    ]


def test_launch_reports_a_failed_process():
    status = distributed.launch(2, ["study", "--task", "no-such-task", "--out", "/tmp"])
    assert status == 2  # argparse's usage error, from the first process that failed
