"""Losses, vmapped trials, penalised training, resume, the POLLU ensemble and `stiffnode study`."""

import json  # noqa: E402

import jax
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from stiffnode import checkpoints  # noqa: E402
from stiffnode import trials as tr  # noqa: E402
from stiffnode.cli import main  # noqa: E402
from stiffnode.data import alpine02_dataset  # noqa: E402
from stiffnode.studies import seed_resnet  # noqa: E402
from stiffnode.training.losses import l2_norm, mse, penalised_loss, rmse  # noqa: E402

pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)


@pytest.fixture(scope="module")
def data():
    return alpine02_dataset(seed=3, dim=2, n_train=40, n_test=10, dtype=jnp.float64)


def _config(**kw):
    base = dict(width=5, depth=2, epochs=4, batch_size=10, eval_every=2, proxy_samples=4)
    return tr.TrainConfig(**(base | kw))


def test_losses_against_numpy():
    rng = np.random.default_rng(0)
    pred, y, p = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)), rng.normal(size=6)
    sq = np.sum((pred - y) ** 2, axis=1)
    assert float(mse(pred, y)) == pytest.approx(np.mean((pred - y) ** 2))
    assert float(rmse(pred, y)) == pytest.approx(np.sqrt(np.mean((pred - y) ** 2)))
    assert float(penalised_loss(pred, y, p, 0.0)) == pytest.approx(np.sqrt(np.mean(sq)))
    expected = np.sqrt(np.mean(sq + 0.3 * p**2))
    assert float(penalised_loss(pred, y, p, 0.3)) == pytest.approx(expected)
    params = {"a": jnp.ones((2, 2)), "b": jnp.full(3, 2.0), "n": "static"}
    assert float(l2_norm(params)) == pytest.approx(np.sqrt(4 + 12))
    with pytest.raises(ValueError, match="differ in shape"):
        penalised_loss(pred, y[:, :2], p, 1.0)


def test_config_errors(data):
    with pytest.raises(ValueError, match="unknown penalty 'gelfond'"):
        _config(penalty="gelfond")
    with pytest.raises(ValueError, match="eval_every=3 must divide epochs=4"):
        _config(eval_every=3)
    with pytest.raises(ValueError, match="width must be a positive int"):
        _config(width=0)
    with pytest.raises(ValueError, match="exceeds the 40 training samples"):
        tr.train_trials(_config(batch_size=50), data, [0])
    bad = data._replace(x_train=data.x_train.at[0, 0].set(jnp.nan))
    with pytest.raises(ValueError, match="NaN"):
        tr.train_trials(_config(), bad, [0])
    with pytest.raises(ValueError, match="seeds is empty"):
        tr.train_trials(_config(), data, [])
    with pytest.raises(ValueError, match="devices is empty"):
        tr.train_trials(_config(), data, [0], devices=[])


def test_vmapped_trials_equal_trials_one_by_one(data):
    """Trials spread over the two test CPU devices equal each trial alone (padded to two:
    itself and a copy) and the same trials vmapped on one device."""
    assert len(jax.devices()) == 2
    config = _config(penalty="amortised", lam=1e-2)
    together = tr.train_trials(config, data, [0, 1], dtype=jnp.float64)
    one_device = tr.train_trials(config, data, [0, 1], dtype=jnp.float64, devices=jax.devices()[:1])
    for i, seed in enumerate([0, 1]):
        alone = tr.train_trials(config, data, [seed], dtype=jnp.float64)
        for other, j in ((alone, 0), (one_device, i)):
            for k, v in other.history.items():
                np.testing.assert_allclose(together.history[k][i], v[j], rtol=1e-9, err_msg=k)
            np.testing.assert_allclose(
                tr.trial_model(together.models, i).weights,
                tr.trial_model(other.models, j).weights,
                rtol=1e-9,
            )
    assert together.history["ER"].shape == (2, 2)
    assert np.all(together.diverged_at == 0)
    assert alone.final["ER"].shape == (1,)
    np.testing.assert_array_equal(together.epochs, [2, 4])


@pytest.mark.parametrize("penalty", ["amortised", "frobenius"])
def test_penalty_reduces_its_proxy(data, penalty):
    """Same seeds: the stiffness-penalised models end with a smaller Gelfand radius sum."""
    kw = dict(epochs=20, eval_every=20, proxy_samples=40, learning_rate=1e-2)
    plain = tr.train_trials(_config(**kw), data, [0, 1], dtype=jnp.float64)
    stiff = tr.train_trials(
        _config(penalty=penalty, lam=1.0, **kw), data, [0, 1], dtype=jnp.float64
    )
    key = "frobenius" if penalty == "frobenius" else "gelfand"
    assert np.all(stiff.history[key][:, -1] < 0.8 * plain.history[key][:, -1])
    assert np.all(stiff.final["stiffness"] < plain.final["stiffness"])


def test_training_resumes_from_checkpoint(data, tmp_path, monkeypatch):
    config = _config(epochs=6, eval_every=1, penalty="amortised", lam=1e-2)
    reference = tr.train_trials(config, data, [0, 1], dtype=jnp.float64)
    build = tr._build

    def interrupted_build(*args):
        run = build(*args)
        calls = []

        def chunk(*a):
            if len(calls) == 3:
                raise KeyboardInterrupt  # killed after 3 of 6 epochs
            calls.append(1)
            return run(*a)

        return chunk

    ckpt = tmp_path / "ckpt.npz"
    monkeypatch.setattr(tr, "_build", interrupted_build)
    with pytest.raises(KeyboardInterrupt):
        tr.train_trials(
            config, data, [0, 1], dtype=jnp.float64, checkpoint=ckpt, checkpoint_every_s=0.0
        )
    assert ckpt.exists()
    interrupted_wall = checkpoints.load(ckpt)[1]["wall_time_s"]
    assert interrupted_wall > 0
    monkeypatch.setattr(tr, "_build", build)
    resumed = tr.train_trials(config, data, [0, 1], dtype=jnp.float64, checkpoint=ckpt)
    for k, v in reference.history.items():
        np.testing.assert_allclose(resumed.history[k], v, rtol=1e-9, err_msg=k)
    # The time before the interruption is carried into the resumed run's.
    assert resumed.wall_time_s > interrupted_wall
    # Another configuration's checkpoint is refused, naming it.
    with pytest.raises(ValueError, match="another configuration"):
        tr.train_trials(_config(width=3, epochs=6), data, [0, 1], checkpoint=ckpt)
    # A truncated checkpoint is set aside with a warning, and training starts afresh.
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    with pytest.warns(UserWarning, match="ckpt.npz is damaged"):
        again = tr.train_trials(config, data, [0, 1], dtype=jnp.float64, checkpoint=ckpt)
    assert (tmp_path / "ckpt.npz.damaged").exists()
    np.testing.assert_allclose(again.history["ER"], reference.history["ER"], rtol=1e-9)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # lr 1e300 in float32
def test_diverging_trials_are_marked_not_reported(data):
    """A learning rate that blows up: each trial is marked diverged with its epoch, its
    final metrics are NaN (not numbers from a NaN model; was numpy's LinAlgError at 1e300),
    and the study's medians leave it out and count it."""
    for lr in (1e6, 1e300):
        result = tr.train_trials(_config(learning_rate=lr), data, [0, 1])
        assert np.all(result.diverged_at == 2), lr  # seen at the first record, epoch 2
        assert all(np.all(np.isnan(v)) for v in result.final.values())
    rows = [
        {"seed": s, "diverged_at": d, "wall_time_s": 1.0, "group_wall_time_s": 2.0,
         "final_ER": er, "final_GE": er, "final_stiffness": 1.0}  # fmt: skip
        for s, d, er in ((0, 0, 1.0), (1, 4, np.nan), (2, 0, 3.0))
    ]
    summary, details = seed_resnet._summarise({"RES": rows}, "alpine02", 3, 4, "amortised")
    assert summary["RES"]["ER"] == 2.0 and summary["RES"]["diverged"] == 1
    assert details["models"]["RES"]["diverged_seeds"] == [1]
    all_diverged = [r | {"diverged_at": 2} for r in rows]
    summary, _ = seed_resnet._summarise({"RES": all_diverged}, "alpine02", 3, 4, "amortised")
    assert summary["RES"]["ER"] is None and summary["RES"]["diverged"] == 3


def test_pollu_ensemble_members_against_scipy(tmp_path):
    """Two ensemble members solved by stiffnode (its default BDF) inside one batch of 40
    (vmapped in chunks over the devices) against scipy's Radau (that batching does not
    change a member: test_batched.py)."""
    from scipy.integrate import solve_ivp

    from stiffnode.data.ensembles import PERTURBED_RATES, pollu_final_state
    from stiffnode.problems import pollu

    u = np.array([np.linspace(-1, 1, 15), -(np.linspace(-1, 1, 15) ** 2)])
    more = np.random.default_rng(0).uniform(-1, 1, (38, 15))
    ours = pollu_final_state(np.concatenate([u, more]), batch=40)[:2]
    for ui, yi in zip(u, ours, strict=True):
        k = pollu().args.copy()
        k[list(PERTURBED_RATES)] *= 2.0**ui
        p = pollu(k)
        ref = solve_ivp(
            p.numpy_rhs,
            (p.t0, p.t1),
            p.y0,
            method="Radau",
            rtol=1e-10,
            atol=1e-14,
            jac=p.numpy_jac,
            args=(p.args,),
        ).y[:, -1]
        np.testing.assert_allclose(yi, ref, rtol=1e-4, atol=1e-10)
    with pytest.raises(ValueError, match="shape"):
        pollu_final_state(u[:, :3])


def test_study_cli_writes_summary_and_never_recomputes(tmp_path, monkeypatch):
    small = seed_resnet.TASKS["alpine02"] | dict(width=4, depth=2, num_batches=2)
    monkeypatch.setitem(seed_resnet.TASKS, "alpine02", small)
    out = tmp_path / "study"
    args = dict(out=out, trials=2, epochs=2, progress=False)
    first = seed_resnet.run_study("alpine02", models=("RES",), **args)  # "killed" after RES
    files = sorted((out / "trials" / "res").glob("*.npz"))
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    assert (
        main(
            [
                "study",
                "--task",
                "alpine02",
                "--trials",
                "2",
                "--epochs",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    assert [f.stat().st_mtime_ns for f in files] == stamps  # RES trials not recomputed
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["RES", "RES L2", "RES stiff"]
    for row in summary.values():
        assert set(row) == {"ER", "GE", "stiffness", "wall_time_s", "diverged"}
        assert all(np.isfinite(v) for v in row.values()) and row["diverged"] == 0
    assert summary["RES"] == first["RES"]
    # Damaged trial files (truncated, empty, incomplete) are named, set aside and their
    # trials recomputed; the summary is unchanged.
    files[0].write_bytes(files[0].read_bytes()[:300])
    files[1].write_bytes(b"")
    with pytest.warns(UserWarning, match="damaged") as caught:
        again = seed_resnet.run_study("alpine02", models=("RES",), **args)
    assert all(any(str(f) in str(w.message) for w in caught) for f in files)
    assert all(f.with_name(f.name + ".damaged").exists() for f in files)
    assert again["RES"]["ER"] == pytest.approx(first["RES"]["ER"], rel=1e-12)
    # (an incomplete file, e.g. without final_ER: test_checkpoints.py)
    for name in ("summary.csv", "trials.csv", "evolution.png", "details.json"):
        assert (out / name).exists()
    with pytest.raises(ValueError, match="another study"):  # other epochs: never reused
        seed_resnet.run_study("alpine02", models=("RES",), **(args | dict(epochs=4)))
    with pytest.raises(ValueError, match="unknown task"):
        seed_resnet.run_study("climate", out=out)
