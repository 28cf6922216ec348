"""Neural ODE on irregularly sampled damped-spiral trajectories, extrapolated past the data."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg

from stiffnode import time_series as ts


def test_damped_spiral_is_the_exact_linear_flow():
    data = ts.damped_spiral(jax.random.key(0), 3, 5, 2.0, dtype=jnp.float32)
    A = np.asarray(ts.spiral_matrix())
    assert data.ts.shape == (3, 5) and data.ys.shape == (3, 5, 2)
    assert np.all(np.diff(np.asarray(data.ts), axis=1) >= 0) and float(data.ts.max()) <= 2.0
    want = [
        [scipy.linalg.expm(A * t) @ np.asarray(y0) for t in row]
        for row, y0 in zip(np.asarray(data.ts), data.y0, strict=True)
    ]
    np.testing.assert_allclose(data.ys, want, rtol=1e-4, atol=1e-5)


def test_neural_ode_fits_irregular_samples_and_extrapolates():
    data = ts.damped_spiral(jax.random.key(0), 8, 10, 3.0, frequency=1.0)
    future = ts.damped_spiral(jax.random.key(1), 8, 10, 6.0, t_min=3.0, frequency=1.0)
    field = ts.AutonomousMLP(2, 16, 1, key=jax.random.key(2))
    options = dict(rtol=1e-3, atol=1e-5, max_steps=128)
    trained, losses = ts.fit_trajectories(
        field, data, steps=300, optimizer=optax.adam(1e-2), **options
    )
    assert losses[-1] < 0.01 * losses[0]
    # Beyond the training window t <= 3: far better than predicting the origin (the
    # spiral's limit) and than the untrained model.
    extrapolated = float(ts.trajectory_loss(trained, future, **options))
    assert extrapolated < 0.1 * float(jnp.mean(future.ys**2))
    assert extrapolated < 0.01 * float(ts.trajectory_loss(field, future, **options))
