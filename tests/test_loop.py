"""The one training loop (`stiffnode.training.loop`): history, divergence, checkpoints."""

import time

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stiffnode.training import TrainingDiverged, fit_full_batch, has_diverged, train_loop


def _geometric(rate):
    """A toy trainer: the loss of each member is multiplied by `rate` per record."""

    def advance(state):
        state = state * rate
        return state, {"loss": state, "twice": 2 * state}

    return advance


def test_has_diverged_rule():
    assert list(has_diverged([1.0, np.nan, np.inf, 2e6, 1e6], 1.0)) == [0, 1, 1, 1, 0]
    # A loss that may be negative (an NLL) is judged by the scale of its start.
    assert not has_diverged(3.0, -2.0) and has_diverged(3e6, -2.0)


def test_history_and_records():
    result = train_loop(_geometric(np.array([0.5])), np.array([1.0]), 3, start_loss=1.0)
    np.testing.assert_allclose(result.history["loss"][:, 0], [0.5, 0.25, 0.125])
    np.testing.assert_allclose(result.history["twice"][:, 0], [1.0, 0.5, 0.25])
    assert result.records == 3 and result.diverged_at is None and result.wall_time_s >= 0


def test_stop_rule_and_time_budget():
    # The loss halves each record: below 0.2 after the third; the stop rule sees it then.
    result = train_loop(_geometric(np.array([0.5])), np.array([1.0]), 10, start_loss=1.0,
                        stop=lambda history: history["loss"][-1][0] < 0.2)  # fmt: skip
    assert result.records == 3 and result.history["loss"].shape == (3, 1)
    # A budget that runs out mid-run: records of 50 ms, 0.1 s allowed, 10 asked.
    def slow(state):
        time.sleep(0.05)
        return state, {"loss": state}

    result = train_loop(slow, np.array([1.0]), 10, start_loss=1.0, max_seconds=0.1)
    assert 1 <= result.records < 10
    # A budget spent before the first record: none is started.
    result = train_loop(_geometric(np.array([0.5])), np.array([1.0]), 10, start_loss=1.0,
                        max_seconds=0.0)  # fmt: skip
    assert result.records == 0


def test_divergence_raises_naming_the_unit():
    # 20^5 = 3.2e6 is the first loss above 1e6 x the start: record 5, of 2 epochs each.
    with pytest.raises(TrainingDiverged, match="diverged in epoch 10: loss 3.2e\\+06") as info:
        train_loop(_geometric(20.0), np.array(1.0), 10, start_loss=1.0, every=2)
    assert info.value.epoch == 10 and info.value.loss == 3.2e6


def test_members_are_marked_and_the_loop_stops_when_all_diverged():
    rates = np.array([0.5, 100.0, np.nan])
    result = train_loop(
        _geometric(rates), np.ones(3), 10, start_loss=np.ones(3), every=5, members=True
    )
    # 100^3 = 1e6 is not above 1e6x; 100^4 is (record 4, epoch 20); NaN at once (epoch 5).
    np.testing.assert_array_equal(result.diverged_at, [0, 20, 5])
    assert result.records == 10 and result.history["loss"].shape == (3, 10)
    everyone = train_loop(
        _geometric(np.array([np.inf, np.inf])), np.ones(2), 10, start_loss=1.0, members=True
    )
    assert everyone.records == 1  # nothing left to train after the first record
    assert np.isnan(everyone.history["loss"][:, 1:]).all()  # the untrained records: NaN


def test_checkpoint_resumes_with_its_time_and_host_state(tmp_path):
    path = tmp_path / "loop.npz"
    calls, interrupt = [], [True]

    def advance(state):
        calls.append(1)
        if interrupt[0] and len(calls) == 3:  # killed during the third record
            raise KeyboardInterrupt
        return state + 1.0, {"loss": np.asarray(1.0 / (state + 1.0))}

    with pytest.raises(KeyboardInterrupt):
        train_loop(advance, np.array(0.0), 5, start_loss=1.0, checkpoint=path,
                   checkpoint_every_s=0.0, to_host=lambda s: {"x": s},
                   from_host=lambda h: h["x"])  # fmt: skip
    calls.clear()
    interrupt[0] = False
    result = train_loop(advance, np.array(0.0), 5, start_loss=1.0, checkpoint=path,
                        to_host=lambda s: {"x": s}, from_host=lambda h: h["x"])  # fmt: skip
    assert float(result.state) == 5.0 and len(calls) == 3  # records 3, 4, 5 only
    np.testing.assert_allclose(result.history["loss"], 1.0 / np.arange(1.0, 6.0))


def test_fit_full_batch_names_the_diverging_step():
    def loss(m):
        return jnp.sum(m["w"] ** 2)

    with pytest.raises(TrainingDiverged, match="diverged in step") as info:
        fit_full_batch({"w": jnp.ones(2)}, loss, optax.sgd(10.0), 20)
    # w -> (1 - 2 * 10) w = -19 w per step: the loss 361^k passes 1e6 x the start at k = 3.
    assert info.value.epoch == 4  # the loss before step 4 is 361^3 = 4.7e7
