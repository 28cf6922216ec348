"""Crossing problem: a plain neural ODE cannot fit g(-1) = 1, g(1) = -1; an augmented one can."""

import jax
import jax.numpy as jnp
import numpy as np

from stiffnode import AugmentedNeuralODE, crossing

# Steps small enough that the discrete map is itself monotone (with dt0 = 0.25, Tsit5's map
# is not, and the loss dips a hair below the bound).
FAST = dict(solver="tsit5", dt0=0.1, stepsize_controller="constant")


def test_plain_neural_ode_collapses_to_the_monotone_bound():
    model, losses = crossing.fit_crossing(
        crossing.plain_model(jax.random.key(0)), steps=100, solve_options=FAST
    )
    assert losses[0] > losses[-1]  # training did something...
    # ...but no increasing map gets below MSE 1: both outputs collapse towards 0.
    assert losses.min() >= crossing.MONOTONE_LOSS_BOUND - 1e-5
    assert losses[-1] < crossing.MONOTONE_LOSS_BOUND + 0.05
    g = np.asarray(crossing.flow_map(model, jnp.linspace(-2.0, 2.0, 41), FAST))
    assert np.all(np.diff(g) > 0)  # the learned flow map is increasing
    assert np.all(np.abs(g[[10, 30]]) < 0.1)  # g(-1), g(1) close to 0


def test_augmented_neural_ode_fits_the_crossing():
    model, losses = crossing.fit_crossing(
        crossing.augmented_model(jax.random.key(0)), steps=100, solve_options=FAST
    )
    assert isinstance(model, AugmentedNeuralODE)
    assert losses[-1] < 1e-3
    x, y = crossing.crossing_data()
    g = crossing.flow_map(model, x[:, 0], FAST)
    np.testing.assert_allclose(g, y[:, 0], atol=0.05)
