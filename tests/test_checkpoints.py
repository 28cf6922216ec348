"""`stiffnode.checkpoints`: whole-or-absent files, damaged ones named and set aside."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from stiffnode import checkpoints


def test_round_trip_and_atomic_replacement(tmp_path):
    path = tmp_path / "unit.npz"
    checkpoints.save(path, {"a": np.arange(3.0), "b": np.int32(7)}, {"note": "x", "n": 2})
    arrays, meta = checkpoints.load(path, required=("a", "b"))
    np.testing.assert_array_equal(arrays["a"], [0.0, 1.0, 2.0])
    assert int(arrays["b"]) == 7 and meta == {"note": "x", "n": 2}
    checkpoints.save(path, {"a": np.ones(2)})
    assert checkpoints.load(path)[1] == {}
    assert os.listdir(tmp_path) == ["unit.npz"]  # no temporary left behind
    with pytest.raises(ValueError, match="reserved"):
        checkpoints.save(path, {"__meta__": np.ones(1)})


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda b: b[: len(b) // 2], "BadZipFile|EOFError|ValueError"),
        (lambda b: b"", "EOFError|ValueError|BadZipFile"),
        (lambda b: b"not a zip file at all", "ValueError|BadZipFile|OSError"),
    ],
)
def test_damaged_files_are_named_and_set_aside(tmp_path, damage, reason):
    path = tmp_path / "trial_0001.npz"
    checkpoints.save(path, {"a": np.arange(1000.0)})
    path.write_bytes(damage(path.read_bytes()))
    message = f"trial_0001.npz is damaged: ({reason})"
    with pytest.raises(checkpoints.DamagedFileError, match=message):
        checkpoints.load(path)
    with pytest.warns(UserWarning, match="moved to .*trial_0001.npz.damaged"):
        assert checkpoints.load_or_set_aside(path) is None
    assert not path.exists() and (tmp_path / "trial_0001.npz.damaged").exists()
    assert checkpoints.load_or_set_aside(path) is None  # no file: nothing to warn about


def test_incomplete_file_and_set_aside_numbering(tmp_path):
    path = tmp_path / "t.npz"
    checkpoints.save(path, {"a": np.ones(2)})
    with pytest.raises(checkpoints.DamagedFileError, match="no final_ER in it"):
        checkpoints.load(path, required=("a", "final_ER"))
    assert checkpoints.set_aside(path).name == "t.npz.damaged"
    checkpoints.save(path, {"a": np.ones(2)})
    assert checkpoints.set_aside(path).name == "t.npz.damaged-2"


def test_trees_are_checked_against_the_expected_structure():
    like = {"w": jnp.zeros((2, 3), jnp.float32), "b": jnp.zeros(3, jnp.float32)}
    arrays = checkpoints.tree_arrays(like, "params")
    assert sorted(arrays) == ["params_0", "params_1"]
    back = checkpoints.tree_from_arrays(arrays, like, "params", what="other params")
    assert jnp.shape(back["w"]) == (2, 3)
    with pytest.raises(ValueError, match="other params: params_0 is float32\\[3\\] where"):
        checkpoints.tree_from_arrays(arrays, {"w": like["b"], "b": like["w"]}, "params",
                                     what="other params")  # fmt: skip
    with pytest.raises(ValueError, match="holds 2 arrays where 1 are expected"):
        checkpoints.tree_from_arrays(arrays, {"w": like["w"]}, "params", what="other params")
