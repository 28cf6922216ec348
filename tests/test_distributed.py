"""Several JAX processes (`stiffnode.distributed`): two local processes over gloo give the
study, the ensemble and the gradient flow of one process; a killed process loses nothing
finished."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import stiffnode as sn
import two_process_worker
from stiffnode import distributed
from stiffnode.studies import seed_resnet

STUDY = ["study", "--task", "alpine02", "--trials", "2", "--epochs", "2", "--quiet", "--models",
         "RES", "RES L2"]  # fmt: skip


def _wait_for(condition, processes, timeout_s):
    """Poll `condition()` until it holds; fails if a process ends first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        ended = [p for p in processes if p.poll() is not None]
        assert not ended, [(p.returncode, p.stderr.read()[-2000:]) for p in ended]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_killed_process_loses_nothing_finished(tmp_path):
    """Two processes of `stiffnode study` (each trains one of two trials per model on its CPU
    device); process 1 is SIGKILLed once RES's trials are written, while RES L2 trains.
    Process 0 stops with an error naming itself, not a hang. Rerunning the same command
    (`stiffnode launch -n 2`) trains only RES L2, and its summary equals one process's
    clean run (two CPU devices, conftest.py)."""
    out = tmp_path / "two"
    command = [*STUDY, "--out", str(out)]
    port = str(distributed.free_port())
    joined = ["--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--cpu-devices", "1"]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "stiffnode", *command, *joined, "--process-id", str(i)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    res = out / "trials" / "res"
    try:
        _wait_for(lambda: len(list(res.glob("trial_*.npz"))) == 2, processes, 300)
        processes[1].send_signal(signal.SIGKILL)
        # Process 0 finds its peer gone at its next collective (gloo: connection closed).
        _, err = processes[0].communicate(timeout=120)
        assert processes[0].returncode == 1, err[:3000]
        assert "process 0 of 2: another process of this run stopped" in err, err[:3000]
    finally:
        for p in processes:
            p.kill()
            p.wait()
    # (every process writes every trial file, so they are final only now)
    written = {f.name: f.stat().st_mtime_ns for f in res.iterdir()}
    assert not (out / "summary.json").exists()
    again = subprocess.run(
        [sys.executable, "-m", "stiffnode", "launch", "-n", "2", "--", *command],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("wrote") == 1  # process 0 reports, process 1 does not
    assert {f.name: f.stat().st_mtime_ns for f in res.iterdir()} == written  # not retrained
    assert not list((out / "checkpoints").glob("*.npz"))  # every process's, once finished
    two = json.loads((out / "summary.json").read_text())
    one = seed_resnet.run_study("alpine02", out=tmp_path / "one", trials=2, epochs=2,
                                models=("RES", "RES L2"), progress=False)  # fmt: skip
    for model in ("RES", "RES L2"):
        for key in ("ER", "GE", "stiffness"):
            # The same float32 programs on the same devices' shares: equal to round-off.
            np.testing.assert_allclose(two[model][key], one[model][key], rtol=1e-6,
                                       err_msg=f"{model} {key}")  # fmt: skip


@pytest.mark.x64
def test_ensemble_and_flow_over_devices_and_processes_equal_one_device(tmp_path):
    """`solve_ensemble`'s members and the gradient flow's batch split over two CPU devices
    of this process (conftest.py) and over two processes of one JAX program
    (`two_process_worker.py`, one CPU device each) give the one-device results: the ensemble
    member by member, the flow's trajectory (loss and parameters after each window) to
    round-off (a reduction in another order: a few ulps). So do vmapped trials interrupted
    on two processes and resumed from each process's own checkpoint."""
    port, out = str(distributed.free_port()), tmp_path / "two.npz"
    worker = [sys.executable, str(Path(__file__).with_name("two_process_worker.py")), port]
    processes = [  # started first, to run while this process computes its own results
        subprocess.Popen([*worker, str(i), str(out)], stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    try:
        batch, solver = two_process_worker.flow_batch(), two_process_worker.FLOW_SOLVER
        one = two_process_worker.gradient_flow(sn, batch, solver)
        two = two_process_worker.gradient_flow(sn, distributed.shard_batch(batch), solver)
        assert len(two.params["w"].sharding.device_set) == 2
        np.testing.assert_allclose(two.history["loss"], one.history["loss"], rtol=1e-13)
        for k in ("w", "b"):
            np.testing.assert_allclose(two.params[k], one.params[k], rtol=1e-12, atol=1e-15)
        with pytest.raises(ValueError, match="multiple of their number"):
            distributed.shard_batch({"x": batch["x"][:63]})
        ys, steps = two_process_worker.ensemble(sn, devices=jax.devices()[:1])
        trials = two_process_worker.trials(sn, devices=jax.devices()[:1])
        errors = [p.communicate(timeout=300)[1] for p in processes]
    finally:
        for p in processes:
            p.kill()
    assert [p.returncode for p in processes] == [0, 0], [e[-3000:] for e in errors]
    processes = np.load(out)
    # Vectorised code in other chunks rounds differently: far below the tolerances.
    np.testing.assert_allclose(processes["ensemble_ys"], ys, rtol=1e-10, atol=1e-18)
    np.testing.assert_array_equal(processes["ensemble_steps"], steps)
    np.testing.assert_allclose(processes["flow_loss"], one.history["loss"], rtol=1e-13)
    np.testing.assert_allclose(processes["flow_w"], one.params["w"], rtol=1e-12, atol=1e-15)
    # Trials interrupted and resumed on two processes: the uninterrupted one-device history
    # (float64; the same programs per trial: round-off).
    for k, v in trials.history.items():
        np.testing.assert_allclose(processes[f"trials_{k}"], v, rtol=1e-9, err_msg=k)
    assert processes["trials_wall_time_s"] > 0


def test_launch_reports_a_failed_process():
    status = distributed.launch(2, ["study", "--task", "no-such-task", "--out", "/tmp"])
    assert status == 2  # argparse's usage error, from the first process that failed
