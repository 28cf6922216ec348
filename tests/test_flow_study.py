"""The digits data, `stiffnode flow` end to end at tiny sizes (the files it writes, the target
it sets from Adam, resuming), and the scipy baseline against the JAX flow's trajectory."""

import json  # noqa: E402

import jax
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from stiffnode import checkpoints  # noqa: E402
from stiffnode.cli import main  # noqa: E402
from stiffnode.data import digits_dataset  # noqa: E402
from stiffnode.studies import flow_training  # noqa: E402

pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)


def test_digits_dataset_is_a_shuffled_split_of_sklearns():
    d = digits_dataset(seed=1, test_fraction=0.25)
    raw = load_digits()
    assert d.x_train.shape == (1348, 64) and d.x_test.shape == (449, 64)
    assert d.y_train.dtype == np.int32 and set(np.unique(d.y_train)) == set(range(10))
    x = np.concatenate([d.x_test, d.x_train]) * 16
    y = np.concatenate([d.y_test, d.y_train])
    # The same multiset of (image, label) pairs as scikit-learn's, scaled to [0, 1].
    key = lambda xs, ys: sorted(zip(map(tuple, np.round(xs).astype(int)), ys, strict=True))  # noqa: E731
    assert key(x, y) == key(raw.data, raw.target)
    assert float(d.x_train.max()) <= 1.0
    with pytest.raises(ValueError, match="test_fraction"):
        digits_dataset(test_fraction=1.0)


def test_flow_study_cli(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["flow", "--task", "digits", "--out", str(out), "--updates", "30", "--budget", "20",
            "--methods", "adam", "flow-bdf", "--learning-rates", "0.03", "0.1", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "flow-bdf" in printed and "wrote" in printed
    summary = json.loads((out / "summary.json").read_text())
    adam, bdf = summary["adam"], summary["flow-bdf"]
    assert summary["task"]["target_loss"] == adam["final_train_loss"]
    assert adam["learning_rates_tried"] == [0.03, 0.1] and adam["grad_evals"] == 30
    assert adam["learning_rate"] in (0.03, 0.1)
    # BDF on the flow reaches Adam's 30-update loss, and its counts add up.
    assert bdf["reached_target"] and bdf["stop_reason"] == "target_loss"
    assert bdf["final_train_loss"] <= adam["final_train_loss"]
    assert bdf["grad_evals"] == bdf["solver_stats"]["num_vf_evals"] > 0
    assert bdf["hvp_evals"] > 0  # 1,210 parameters: Hessian-vector products, no dense H
    for name in ("table.md", "loss.png", "stiffness.png", "solver_stats.png", "history.json"):
        assert (out / name).stat().st_size > 0, name
    # Rerunning resumes: nothing is recomputed, the summary is unchanged.
    before = (out / "summary.json").read_text()
    assert main(args) == 0
    assert (out / "summary.json").read_text() == before
    # The command split the batch over this process's two CPU devices (conftest.py; padded
    # with zero weights: 1,347 samples): one device gives the same runs to round-off.
    one = flow_training.run_study("digits", tmp_path / "one", updates=30, budget=20.0,
                                  methods=("adam", "flow-bdf"), learning_rates=(0.03, 0.1),
                                  progress=False, plot=False)  # fmt: skip
    assert one["adam"]["learning_rate"] == adam["learning_rate"]
    for name in ("adam", "flow-bdf"):
        np.testing.assert_allclose(one[name]["final_train_loss"], summary[name]["final_train_loss"],
                                   rtol=1e-9, err_msg=name)  # fmt: skip


def test_scipy_and_jax_flows_agree_on_the_trajectory():
    """The seed's setting (scipy LSODA and zvode, finite-difference Jacobians) and
    stiffnode's gradient_flow (BDF, windows of 0.5) at the same times, same tolerances."""
    import jax.numpy as jnp
    import optax

    from stiffnode.flow import gradient_flow, scipy_gradient_flow

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(60, 4)))
    y = jnp.asarray((rng.normal(size=60) > 0).astype(float))

    def loss(p):
        z = jnp.tanh(x @ p["w1"]) @ p["w2"]
        return jnp.mean(jnp.logaddexp(0.0, z) - y * z) + 1e-2 * jnp.sum(p["w1"] ** 2)

    p0 = {"w1": jnp.asarray(rng.normal(size=(4, 3))), "w2": jnp.asarray(rng.normal(size=3))}
    ts = np.arange(1, 7) * 0.5
    opt = gradient_flow(loss, "bdf", window=0.5, rtol=1e-8, atol=1e-10)
    update, p, state, jax_traj = jax.jit(opt.update), p0, opt.init(p0), []
    for _ in ts:
        u, state = update(p, state, p)
        p = optax.apply_updates(p, u)
        jax_traj.append(np.asarray(jax.flatten_util.ravel_pytree(p)[0]))
    for method in ("LSODA", "zvode"):
        r = scipy_gradient_flow(loss, p0, ts[-1], method=method, t_eval=ts, rtol=1e-8, atol=1e-10)
        assert r.finished
        np.testing.assert_allclose(r.ts, ts)
        np.testing.assert_allclose(r.thetas, np.stack(jax_traj), atol=1e-5)
        assert np.all(np.diff(r.losses) < 0)  # the flow decreases the loss


def test_flow_study_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        flow_training.run_study("mnist", tmp_path)
    with pytest.raises(ValueError, match="unknown methods"):
        flow_training.run_study("digits", tmp_path, methods=("adam", "lbfgs"))
    with pytest.raises(ValueError, match="budget must be positive and finite, got -1.0"):
        flow_training.run_study("digits", tmp_path, budget=-1.0)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "FILE"], "exists and is not a directory"),
        (["--out", "FILE/sub"], "cannot write to"),
        (["--out", "DIR", "--methods", "lbfgs"], "invalid choice: 'lbfgs'"),
        (["--out", "DIR", "--learning-rates", "0.1", "-1"], "positive finite number, got '-1'"),
        (["--out", "DIR", "--budget", "-1"], "--budget: expected a positive finite number"),
        (["--out", "DIR", "--seed-time", "inf"], "--seed-time: expected a positive finite"),
    ],
)
def test_flow_cli_bad_arguments_are_usage_errors_before_any_work(
    tmp_path, capsys, monkeypatch, args, message
):
    """Each used to print a traceback (`--budget -1` only after training Adam first)."""
    monkeypatch.setattr(flow_training, "run_study", lambda *a, **k: pytest.fail("work started"))
    (tmp_path / "FILE").write_text("")
    args = [a.replace("FILE", str(tmp_path / "FILE")).replace("DIR", str(tmp_path / "d"))
            for a in args]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        main(["flow", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_flow_cli_reports_an_error_in_one_line(tmp_path, capsys, monkeypatch):
    """An error during the study (every learning rate diverging, `_tune`, tested above; it
    was `TypeError: cannot unpack non-iterable NoneType`) is one line, not a traceback."""

    def diverged(*args, **kwargs):
        raise ValueError("adam: training diverged at every learning rate of [1e+308]")

    monkeypatch.setattr(flow_training, "run_study", diverged)
    with pytest.raises(SystemExit) as exc:
        main(["flow", "--out", str(tmp_path), "--learning-rates", "1e308", "--quiet"])
    assert exc.value.code == 1
    assert "stiffnode flow: error: adam: training diverged at every" in capsys.readouterr().err


def test_flow_cli_defaults_are_the_studys():
    """One home for each setting: the command's defaults are `run_study`'s."""
    import inspect

    from stiffnode.cli import _build_parser

    flow = _build_parser().parse_args(["flow", "--out", "/tmp"])
    defaults = inspect.signature(flow_training.run_study).parameters
    for name in ("updates", "budget", "seed_time", "seed_budget"):
        assert getattr(flow, name) == defaults[name].default, name


def test_damaged_study_summary_is_set_aside(tmp_path):
    (tmp_path / "summary.json").write_text('{"adam": {"final_tr')
    with pytest.warns(UserWarning, match="summary.json is damaged"):
        assert checkpoints.read_json_or_set_aside(tmp_path / "summary.json", {}) == {}
    assert (tmp_path / "summary.json.damaged").exists()


def test_tuning_leaves_out_diverged_rates_and_says_when_all_diverged():
    """Every learning rate diverging used to crash with `TypeError: cannot unpack
    non-iterable NoneType`; 1e300 used to be kept with a "target loss" of 1.9e301."""
    task = flow_training.TASKS["alpine02"](0)
    with pytest.raises(ValueError, match="diverged at every learning rate"):
        flow_training._tune(task, "adam", 5, [1e308])
    lr, final, _ = flow_training._tune(task, "adam", 5, [1e300, 1e-2])
    assert lr == 1e-2 and np.isfinite(final) and final < float(task.loss(task.params))


def test_split_over_devices_pads_with_zero_weights():
    """Five samples over the two test devices: padded to six with a zero-weight sample, split
    one share per device; the loss is the unpadded one."""
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    x, y, p = rng.normal(size=(5, 3)), rng.normal(size=5), rng.normal(size=3)

    def loss_on(p, x, y, w):
        return jnp.sum(w * (x @ p - y) ** 2) / jnp.sum(w)

    task = flow_training.FlowTask("toy", p, loss_on, {"x": x, "y": y, "w": np.ones(5)},
                                  metrics=dict, test_metric="", description="")  # fmt: skip
    split = flow_training.split_over_devices(task, jax.devices())
    assert split.batch["x"].shape == (6, 3) and float(split.batch["w"][5]) == 0.0
    assert len(split.batch["x"].sharding.device_set) == 2
    # float32 sums in another order: a few ulps.
    np.testing.assert_allclose(jax.jit(split.loss_on)(p, **split.batch), task.loss(p), rtol=1e-6)
