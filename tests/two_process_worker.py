"""One process of a two-process JAX program (gloo over 127.0.0.1, one CPU device each):
`python two_process_worker.py PORT PROCESS_ID OUT.npz`. It runs an ensemble of stiff solves
(`solve_ensemble`, the members split over both processes' devices), a data-parallel
gradient flow (the batch split over both processes' devices) and vmapped trials interrupted
and resumed from each process's checkpoint; process 0 writes the results to OUT.npz.
`test_distributed.py` runs it and compares with one process; the problems are defined here
once for both."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

ENSEMBLE_RATES = np.array([1.0, 30.0, 100.0, 5.0, 300.0])  # 5 members over 2 devices: padded
FLOW_UPDATES = 3
# The data-parallel flow is solver-independent; BDF (Newton, Jacobian reuse) is the one with
# the most state to shard (Tsit5's run was dropped: 6 s of compilation in each process).
FLOW_SOLVER = "bdf"


def ensemble_field(t, y, rate):
    return -rate * y + jnp.array([0.0, 1.0]) * y[0] ** 2


def ensemble(stiffnode, devices=None):
    """Five stiff members (BDF, float64), each with its own decay rate."""
    y0s = np.random.default_rng(1).uniform(0.5, 2.0, size=(5, 2))
    sol = stiffnode.solve_ensemble(ensemble_field, y0s, 0.0, 1.0, args=ENSEMBLE_RATES,
                                   chunk_size=2, devices=devices, solver="bdf", rtol=1e-8,
                                   atol=1e-10)  # fmt: skip
    return np.asarray(sol.ys), np.asarray(sol.stats["num_steps"])


def flow_loss(p, x, y):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(x @ p["w"] + p["b"], y))


def flow_batch():
    x = np.asarray(jax.random.normal(jax.random.key(0), (64, 3)))
    return {"x": x, "y": (x @ np.array([1.0, -2.0, 0.5]) > 0).astype(x.dtype)}


def gradient_flow(stiffnode, batch, solver):
    """The logistic-regression gradient flow, `FLOW_UPDATES` windows of flow time 1."""
    p0 = {"w": jnp.zeros(3), "b": jnp.zeros(())}
    field = stiffnode.flow.gradient_flow(flow_loss, solver, 1.0, 1e-6, 1e-8)
    # (a wall-time rule that never stops it: over processes, process 0's clock decides)
    return stiffnode.flow.run(flow_loss, p0, field, max_updates=FLOW_UPDATES, max_wall_time=1e6,
                              batches=[batch] * (FLOW_UPDATES + 1))  # fmt: skip


TRIALS_SEEDS = [0, 1, 2]  # 3 trials over 2 devices: padded


def trials(stiffnode, *, checkpoint=None, stop_after=None, devices=None):
    """Three small ResNet trials (float64, 6 epochs, a record each); `stop_after` records,
    the run is interrupted (KeyboardInterrupt, as a killed run), its checkpoint kept."""
    from stiffnode.training import trials as tr

    config = tr.TrainConfig(width=4, depth=2, epochs=6, batch_size=10, num_batches=4,
                            eval_every=1)  # fmt: skip
    data = stiffnode.data.alpine02_dataset(seed=3, dim=2, n_train=40, n_test=10,
                                           dtype=jnp.float64)  # fmt: skip
    build = tr._build
    if stop_after is not None:

        def interrupted_build(*args):
            run, calls = build(*args), []

            def chunk(*a):
                if len(calls) == stop_after:
                    raise KeyboardInterrupt
                calls.append(1)
                return run(*a)

            return chunk

        tr._build = interrupted_build
    try:
        return tr.train_trials(config, data, TRIALS_SEEDS, dtype=jnp.float64, devices=devices,
                               checkpoint=checkpoint, checkpoint_every_s=0.0)  # fmt: skip
    finally:
        tr._build = build


def main(port: str, process_id: str, out: str) -> None:
    jax.config.update("jax_num_cpu_devices", 1)
    jax.config.update("jax_enable_x64", True)
    import stiffnode
    from stiffnode import distributed

    distributed.initialize(f"127.0.0.1:{port}", 2, int(process_id), timeout_s=120,
                           heartbeat_timeout_s=20)  # fmt: skip
    assert len(jax.devices()) == 2 and len(jax.local_devices()) == 1
    ys, steps = ensemble(stiffnode)
    results = {"ensemble_ys": ys, "ensemble_steps": steps}
    run = gradient_flow(stiffnode, distributed.shard_batch(flow_batch()), FLOW_SOLVER)
    assert len(run.params["w"].sharding.device_set) == 2  # over both processes
    results["flow_loss"] = np.asarray(run.history["loss"])
    results["flow_w"] = distributed.to_host(run.params["w"])
    # Trials interrupted after 3 of 6 records, resumed from each process's checkpoint.
    checkpoint = Path(out).with_name("trials.npz")
    try:
        trials(stiffnode, checkpoint=checkpoint, stop_after=3)
    except KeyboardInterrupt:
        pass
    mine = stiffnode.trials.process_checkpoint(checkpoint, jax.devices())
    assert mine.exists() and not checkpoint.exists(), mine
    resumed = trials(stiffnode, checkpoint=checkpoint)
    results |= {f"trials_{k}": v for k, v in resumed.history.items()}
    results["trials_wall_time_s"] = np.asarray(resumed.wall_time_s)
    if distributed.is_main():
        np.savez(out, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
