"""Several JAX processes (`stiffnode.distributed`): two local processes over gloo give the
study of one process with two devices."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stiffnode import distributed, flow
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


@pytest.mark.x64
@pytest.mark.parametrize("solver", ["tsit5", "bdf"])
def test_data_parallel_gradient_flow_equals_one_device(solver):
    """The batch split over the two test CPU devices: the flow's trajectory (the loss and
    parameters after each window) equals the one-device run to round-off (a reduction
    in another order: a few ulps)."""
    x = jax.random.normal(jax.random.key(0), (64, 3))
    y = (x @ jnp.array([1.0, -2.0, 0.5]) > 0).astype(x.dtype)

    def loss(p, x, y):
        return jnp.mean(optax.sigmoid_binary_cross_entropy(x @ p["w"] + p["b"], y))

    p0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    runs = [
        flow.run(loss, p0, flow.gradient_flow(loss, solver, 1.0, 1e-6, 1e-8), max_updates=4,
                 batches=[b] * 5)  # fmt: skip
        for b in ({"x": x, "y": y}, distributed.shard_batch({"x": x, "y": y}))
    ]
    one, two = runs
    assert len(two.params["w"].sharding.device_set) == 2
    np.testing.assert_allclose(two.history["loss"], one.history["loss"], rtol=1e-13)
    for k in ("w", "b"):
        np.testing.assert_allclose(two.params[k], one.params[k], rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="multiple of their number"):
        distributed.shard_batch({"x": x[:63]})
