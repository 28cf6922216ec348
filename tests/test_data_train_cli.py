import json  # noqa: E402
import runpy  # noqa: E402
import sys  # noqa: E402

import jax
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402

import stiffnode  # noqa: E402
import stiffnode.cli  # noqa: E402
from stiffnode.cli import main  # noqa: E402
from stiffnode.data import Dataset, alpine02, alpine02_dataset  # noqa: E402
from stiffnode.training import TrainingDiverged, fit  # noqa: E402
from stiffnode.training.losses import model_mse as mse  # noqa: E402

pytestmark = pytest.mark.x64  # float64 in every test here (conftest.py)

# ---------------------------------------------------------------------------- data


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_alpine02_matches_closed_form(dim):
    x, y = alpine02(jax.random.PRNGKey(3), 200, dim)
    assert x.shape == (200, dim) and y.shape == (200, 1)
    assert x.dtype == jnp.float64 and y.dtype == jnp.float64
    xn = np.asarray(x)
    assert xn.min() >= -5 and xn.max() <= 5
    assert xn.min() < -4 and xn.max() > 4  # spread over the whole box
    expected = np.prod(np.sqrt(np.abs(xn)) * np.sin(xn), axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-13, atol=1e-15)


def test_alpine02_dataset():
    data = alpine02_dataset(seed=1, dim=3, n_train=30, n_test=7)
    assert isinstance(data, Dataset)
    assert [a.shape for a in data] == [(30, 3), (30, 1), (7, 3), (7, 1)]
    again = alpine02_dataset(seed=1, dim=3, n_train=30, n_test=7)
    for a, b in zip(data, again, strict=True):
        np.testing.assert_array_equal(a, b)
    other = alpine02_dataset(seed=2, dim=3, n_train=30, n_test=7)
    assert not np.allclose(data.x_train, other.x_train)
    assert not np.allclose(data.x_train[:7], data.x_test)  # independent splits
    single = alpine02_dataset(seed=1, dim=3, n_train=30, n_test=7, dtype=jnp.float32)
    assert all(a.dtype == jnp.float32 for a in single)
    default = alpine02_dataset()
    assert default.x_train.shape == (900, 2) and default.x_test.shape == (100, 2)


@pytest.mark.parametrize(
    "call",
    [
        lambda: alpine02(jax.random.PRNGKey(0), 0),
        lambda: alpine02(jax.random.PRNGKey(0), -3),
        lambda: alpine02(jax.random.PRNGKey(0), 2.5),
        lambda: alpine02(jax.random.PRNGKey(0), True),
        lambda: alpine02(jax.random.PRNGKey(0), 4, dim=0),
        lambda: alpine02(jax.random.PRNGKey(0), 4, dtype=jnp.int32),
        lambda: alpine02_dataset(n_train=0),
        lambda: alpine02_dataset(n_test=-1),
        lambda: alpine02_dataset(dim=0),
        lambda: alpine02_dataset(seed="0"),
    ],
)
def test_alpine02_bad_args(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------------------- train


@pytest.fixture(scope="module")
def tiny():
    data = alpine02_dataset(seed=0, n_train=64, n_test=16)
    model = stiffnode.ResNet(2, 1, 8, 2, key=jax.random.PRNGKey(0), dtype=jnp.float64)
    return model, data


def _resnet_numpy(model, x):
    """The ResNet's forward pass written out in numpy."""
    h = x @ np.asarray(model.input.weight).T + np.asarray(model.input.bias)
    dt = model.T / model.depth
    for W, b in zip(np.asarray(model.weights), np.asarray(model.biases), strict=True):
        h = h + dt * np.tanh(h @ W.T + b)
    return h @ np.asarray(model.output.weight).T + np.asarray(model.output.bias)


def test_mse_helper(tiny):
    model, data = tiny
    pred = _resnet_numpy(model, np.asarray(data.x_test))
    expected = np.mean((pred - np.asarray(data.y_test)) ** 2)
    np.testing.assert_allclose(float(mse(model, data.x_test, data.y_test)), expected,
                               rtol=1e-12)


def test_fit_reduces_loss(tiny):
    model, data = tiny
    seen = []
    initial = float(mse(model, data.x_train, data.y_train))
    optimizer = optax.adam(3e-2)
    trained, history = fit(model, data, optimizer=optimizer, epochs=30, batch_size=8,
                           key=jax.random.PRNGKey(1),
                           callback=lambda epoch, m, metrics: seen.append((epoch, metrics)))
    assert set(history) == {"loss", "train_mse", "test_mse"}
    assert all(isinstance(v, np.ndarray) and v.shape == (30,) for v in history.values())
    assert history["train_mse"][-1] < history["train_mse"][0]
    assert history["train_mse"][-1] < 0.75 * initial
    assert history["test_mse"][-1] < history["test_mse"][0]
    np.testing.assert_allclose(history["train_mse"][-1],
                               float(mse(trained, data.x_train, data.y_train)), rtol=1e-12)
    np.testing.assert_allclose(history["test_mse"][-1],
                               float(mse(trained, data.x_test, data.y_test)), rtol=1e-12)
    assert [e for e, _ in seen] == list(range(30))
    assert seen[-1][1]["train_mse"] == pytest.approx(history["train_mse"][-1])
    # Same static structure, same dtype: a trained model is a drop-in replacement.
    assert type(trained) is type(model) and trained.activation is model.activation
    assert trained.weights.dtype == jnp.float64

    # Deterministic given the key; (x, y) data has no test metrics; default optimizer.
    _, history2 = fit(model, data, optimizer=optimizer, epochs=30, batch_size=8,
                          key=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(history["train_mse"], history2["train_mse"])
    _, history3 = fit(model, (data.x_train, data.y_train), epochs=1, batch_size=64,
                      key=jax.random.PRNGKey(1))
    assert set(history3) == {"loss", "train_mse"}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": 65}, ValueError, "larger than the training set"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"loss": "mae"}, ValueError, "unknown loss"),
        ({"data": "xy"}, TypeError, "data must be"),
        ({"data": "mismatch"}, ValueError, "different numbers of samples"),
        ({"data": "nan_x"}, ValueError, "NaN"),
        ({"data": "nan_y"}, ValueError, "NaN"),
        ({"data": "inf_test"}, ValueError, "NaN or inf"),
        ({"data": "wide_y"}, ValueError, r"to \(1,\), but one target sample has shape \(3,\)"),
        ({"data": "narrow_x"}, ValueError, r"does not accept one input sample of shape \(1,\)"),
    ],
)
def test_fit_bad_inputs(tiny, kwargs, error, match):
    model, data = tiny
    x, y = np.asarray(data.x_train), np.asarray(data.y_train)
    bad = {
        "xy": "xy",
        "mismatch": (x, y[:-1]),
        "nan_x": (np.where(np.arange(64)[:, None] == 5, np.nan, x), y),
        "nan_y": (x, np.where(np.arange(64)[:, None] == 7, np.nan, y)),
        "inf_test": (x, y, np.full_like(x[:4], np.inf), y[:4]),
        # (a 3-wide target for a 1-output model was broadcast silently before)
        "wide_y": (x, np.repeat(y, 3, axis=1)),
        "narrow_x": (x[:, :1], y),
    }
    options = {"epochs": 1, "batch_size": 16, "key": jax.random.PRNGKey(0), "data": data}
    options.update(kwargs)
    if isinstance(options["data"], str):
        options["data"] = bad[options["data"]]
    with pytest.raises(error, match=match):
        fit(model, **options)


@pytest.mark.parametrize("optimizer", [optax.sgd(1e6), optax.adam(1e6)])
def test_fit_reports_divergence_with_its_epoch(tiny, optimizer):
    """sgd(1e6) used to return all-NaN losses and parameters, adam(1e6) losses of 1e24,
    both without a word: now an error naming the epoch (NaN, or above 1e6 x the start)."""
    model, data = tiny
    with pytest.raises(TrainingDiverged, match=r"diverged in epoch \d+") as info:
        fit(model, data, optimizer=optimizer, epochs=20, batch_size=8, key=jax.random.PRNGKey(0))
    assert 1 <= info.value.epoch <= 20
    assert not np.isfinite(info.value.loss) or info.value.loss > 1e6 * float(
        mse(model, data.x_train, data.y_train)
    )


# ---------------------------------------------------------------------------- cli


def test_cli_demo(tmp_path, capsys):
    args = ["--epochs", "3", "--width", "4", "--depth", "3", "--quiet"]
    assert main(["demo", *args, "--out", tmp_path]) == 0
    printed = capsys.readouterr()
    assert "Euler with N=3 steps vs ResNet" in printed.out
    assert printed.err == ""  # --quiet: no progress bar, no messages
    results = json.loads((tmp_path / "demo.json").read_text())
    assert results["config"]["width"] == 4 and results["config"]["depth"] == 3
    assert len(results["training"]["history"]["train_mse"]) == 3
    rows = results["ode"]
    assert {(r["parameterization"], r["solver"]) for r in rows} == {
        (p, s) for p in ("constant", "linear", "polynomial")
        for s in ("euler", "tsit5", "rodas5p")
    }
    for row in rows:
        assert np.isfinite(row["test_mse"]) and row["mean_steps"] >= 1
        if row["solver"] == "euler":
            assert row["max_abs_diff_vs_resnet"] < 1e-12
            assert row["mean_steps"] == 3 and row["mean_vf_evals"] == 3
            assert row["test_mse"] == pytest.approx(results["resnet"]["test_mse"], rel=1e-10)
        assert row["mean_vf_evals"] >= row["mean_steps"]  # every solver counts its work
    assert all(d < 1e-12 for d in results["euler_max_abs_diff_vs_resnet"].values())
    # The adaptive solvers agree with each other (both within tolerance of the ODE).
    by = {(r["parameterization"], r["solver"]): r for r in rows}
    for p in ("constant", "linear", "polynomial"):
        assert by[p, "tsit5"]["test_mse"] == pytest.approx(by[p, "rodas5p"]["test_mse"],
                                                           rel=1e-5)


def test_cli_arguments(capsys, monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(stiffnode.studies.demo, "demo", lambda **kwargs: calls.append(kwargs))
    assert main([]) == 0  # no command means `demo`, with its defaults
    assert main(["--epochs", "7", "--seed", "3", "--out", tmp_path]) == 0
    assert main(["demo", "--width", "5", "--depth", "2", "--quiet"]) == 0
    assert calls == [
        dict(epochs=300, width=16, depth=8, seed=0, out=None, quiet=False),
        dict(epochs=7, width=16, depth=8, seed=3, out=tmp_path, quiet=False),
        dict(epochs=300, width=5, depth=2, seed=0, out=None, quiet=True),
    ]

    with pytest.raises(SystemExit) as exc:
        main(["demo", "--epochs", "0"])
    assert exc.value.code == 2
    assert "positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_python_dash_m(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["stiffnode", "--version"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_module("stiffnode", run_name="__main__")
    assert exc.value.code == 0
    assert stiffnode.__version__ in capsys.readouterr().out
