"""Stiff neural ODEs for kinetics (Kim et al. 2021): the data, the scaled field, the
gradient against finite differences of scipy's Radau, training to a target and resuming,
and `stiffnode fit-kinetics`."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy.integrate import solve_ivp

from helpers import central_difference
from stiffnode.cli import main
from stiffnode.node import stiff_kinetics as sk

pytestmark = pytest.mark.x64

SMALL = dict(width=4, depth=2)  # a small network: few parameters, short compilation


@pytest.fixture(scope="module")
def robertson():
    return sk.kinetics_data("robertson", num_points=12)


def test_robertson_data_conserves_mass_and_peaks_where_published(robertson):
    """y1 + y2 + y3 = 1 at every time (the exact invariant), y2's largest value 3.65e-5
    (Robertson's known peak; Hairer & Wanner's plot) is its scale, and the times are
    log-spaced from 1e-5 to 1e5."""
    full = sk.kinetics_data("robertson")
    np.testing.assert_allclose(np.sum(np.asarray(full.ys), axis=1), 1.0, atol=1e-9)
    assert 3.6e-5 < float(full.scale[1]) < 3.7e-5
    np.testing.assert_allclose(np.asarray(full.ts)[[0, -1]], [1e-5, 1e5], rtol=1e-12)
    assert robertson.ts.shape == (12,) and robertson.ys.shape == (12, 3)


def test_pollu_data_and_bad_problem():
    data = sk.kinetics_data("pollu", num_points=4)
    assert data.ys.shape == (4, 20) and float(data.ts[-1]) == 60.0
    assert np.all(np.asarray(data.scale) > 0)  # constant species are scaled by y0 or 1
    with pytest.raises(ValueError, match="unknown problem"):
        sk.kinetics_data("oregonator")


def test_initialisations(robertson):
    """`init="glorot"` (Kim et al.'s Flux `Dense`): zero biases and weights within
    `sqrt(6 / (fan_in + fan_out))`, spread over most of that range; `"equinox"`: nonzero
    biases within `1/sqrt(fan_in)`; anything else a clear error."""
    glorot = sk.kinetics_model(robertson, key=jax.random.key(0), width=5, depth=6)
    for layer in glorot.net.layers:
        limit = np.sqrt(6.0 / sum(layer.weight.shape))
        assert float(jnp.max(jnp.abs(layer.bias))) == 0.0
        assert 0.5 * limit < float(jnp.max(jnp.abs(layer.weight))) <= limit
    plain = sk.kinetics_model(robertson, key=jax.random.key(0), width=5, depth=6, init="equinox")
    for layer in plain.net.layers:
        bound = 1.0 / np.sqrt(layer.weight.shape[1])
        assert 0.0 < float(jnp.max(jnp.abs(layer.bias))) <= bound
    with pytest.raises(ValueError, match="init must be"):
        sk.kinetics_model(robertson, key=jax.random.key(0), width=5, depth=6, init="he")


def test_gradient_against_finite_differences_of_radau(robertson):
    """d(scaled MAE)/d(params) along a random direction: autodiff through Rodas5P at
    rtol 1e-9 against central differences (step 1e-4 relative) of scipy Radau solves at
    rtol 1e-12. The difference quotient's truncation error is ~1e-8 relative, Radau's error
    over the step ~1e-8, and the solve's gradient error ~1e-7: 1e-5 leaves two orders of
    margin."""
    field = sk.kinetics_model(robertson, key=jax.random.key(0), **SMALL)
    params, static = eqx.partition(field, eqx.is_inexact_array)
    flat, unravel = ravel_pytree(params)
    direction = jax.random.normal(jax.random.key(1), flat.shape, flat.dtype)
    direction = direction / jnp.linalg.norm(direction)

    def loss(p):
        return sk.scaled_mae(eqx.combine(unravel(p), static), robertson, rtol=1e-9, atol=1e-13)

    derivative = float(jnp.vdot(jax.grad(loss)(flat), direction))

    def radau_loss(p):
        field = eqx.combine(unravel(p), static)
        f = jax.jit(lambda t, y: field(t, y))
        sol = solve_ivp(lambda t, y: np.asarray(f(t, jnp.asarray(y))), (0.0, robertson.t_end),
                        np.asarray(robertson.y0), method="Radau", t_eval=np.asarray(robertson.ts),
                        rtol=1e-12, atol=1e-16)  # fmt: skip
        return np.mean(np.abs(sol.y.T - np.asarray(robertson.ys)) / np.asarray(robertson.scale))

    eps = 1e-4 * float(jnp.linalg.norm(flat))
    reference = central_difference(radau_loss, flat, eps, direction)
    assert abs(derivative - reference) <= 1e-5 * abs(reference), (derivative, reference)


def test_training_stops_at_its_target_and_resumes(robertson, tmp_path):
    """Kim et al.'s optimizer lowers the loss (by a fifth in 200 epochs here; a tenth is
    asked); a target reached in the second record stops the run there, returning the
    lowest loss's parameters; a rerun on the same checkpoint trains no further."""
    field = sk.kinetics_model(robertson, key=jax.random.key(0), **SMALL)
    options = dict(epochs=200, epochs_per_record=20, checkpoint=tmp_path / "ckpt.npz")
    first = sk.fit_kinetics(field, robertson, **options)
    loss = first.history["loss"]
    assert first.epochs == 200 and loss.shape == (200,) and loss[-1] < 0.9 * loss[0]
    again = sk.fit_kinetics(field, robertson, **options)
    assert again.epochs == 200
    np.testing.assert_array_equal(again.history["loss"], loss)
    target = float(loss[39]) * 1.0001  # reached in the second record
    stopped = sk.fit_kinetics(field, robertson, epochs=200, epochs_per_record=20,
                              target=target)  # fmt: skip
    assert stopped.epochs == 40
    # The field returned is the lowest loss's (the loss is evaluated before each update).
    best = float(sk.scaled_mae(stopped.field, robertson))
    np.testing.assert_allclose(best, np.min(stopped.history["loss"]), rtol=1e-6)
    with pytest.raises(ValueError, match="multiple of epochs_per_record"):
        sk.fit_kinetics(field, robertson, epochs=30, epochs_per_record=20)


def test_fit_kinetics_cli(tmp_path, capsys):
    assert main(["fit-kinetics", "--problem", "robertson", "--epochs", "20", "--out",
                 str(tmp_path), "--quiet"]) == 0  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs"] == 20 and summary["problem"] == "robertson"
    assert np.isfinite(summary["loss"]) and len(summary["per_species_scaled_mae"]) == 3
    assert (tmp_path / "fit.png").stat().st_size > 0 and (tmp_path / "loss.png").exists()
    with pytest.raises(SystemExit):
        main(["fit-kinetics", "--problem", "nope", "--out", str(tmp_path)])
    # The same directory with another solver: refused before any work.
    with pytest.raises(SystemExit):
        main(["fit-kinetics", "--solver", "kvaerno5", "--epochs", "20", "--out", str(tmp_path)])
    assert "other settings" in capsys.readouterr().err
