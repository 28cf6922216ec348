"""The optimizer race on a tiny task: every method runs in its compiled loop to Adam's loss,
the record is written as it goes and a rerun resumes it."""

import json

import jax.numpy as jnp
import pytest

from stiffnode.studies import optimizer_race

pytestmark = pytest.mark.x64


def test_race_writes_resumes_and_the_flow_reaches_adams_loss(tmp_path, monkeypatch):
    task = optimizer_race.sinc_task(num_points=16, width=4)
    methods = ("adam", "levenberg_marquardt", "flow")
    record = optimizer_race.run_race(
        tmp_path, tasks=[task], seeds=(0,), methods=methods, adam_updates=100,
        max_updates=100, progress=False,
    )  # fmt: skip
    run = record["runs"]["sinc/0"]
    entries = {e["method"]: e for e in run["entries"]}
    assert set(entries) == set(methods)
    assert entries["adam"]["reached"] and entries["flow"]["reached"]
    for e in entries.values():
        # The curve starts at the common initial loss and ends at the final one.
        assert e["losses"][-1] == pytest.approx(e["final_loss"])
        assert len(e["losses"]) == e["updates"] + 1
        if e["reached"]:
            assert e["final_loss"] <= run["target"]
    assert len({e["losses"][0] for e in entries.values()}) == 1
    assert (tmp_path / "table.md").read_text().count("| sinc |") == 3
    assert (tmp_path / "race_sinc.png").stat().st_size > 0
    assert json.loads((tmp_path / "race.json").read_text())["runs"].keys() == {"sinc/0"}

    def fail(*args, **kwargs):
        raise AssertionError("a finished (task, seed) was run again")

    monkeypatch.setattr(optimizer_race, "race_one", fail)
    again = optimizer_race.run_race(
        tmp_path, tasks=[task], seeds=(0,), methods=methods, adam_updates=100,
        max_updates=100, progress=False,
    )  # fmt: skip
    assert again["runs"]["sinc/0"] == run
    # A record made with other settings is not resumed under these.
    with pytest.raises(ValueError, match="other settings"):
        optimizer_race.run_race(tmp_path, tasks=[task], seeds=(0,), methods=methods,
                                progress=False)  # fmt: skip


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        optimizer_race.run_race(tmp_path, tasks=["nope"])
    with pytest.raises(ValueError, match="unknown method"):
        optimizer_race.run_race(tmp_path, tasks=["sinc"], methods=["sgd"])
    digits = optimizer_race.Task(
        "tiny", optimizer_race.classification(lambda p, x: x @ p), {"x": jnp.ones((2, 2))},
        lambda key: jnp.ones((2, 3)), lambda p: {}, "", "",
    )  # fmt: skip
    with pytest.raises(ValueError, match="least-squares"):
        optimizer_race.stepper(digits, "levenberg_marquardt")


def test_race_flags_are_not_mixed_with_the_flow_studys(tmp_path, capsys):
    from stiffnode.cli import main

    for argv in (["--race", "sinc", "--task", "digits"], ["--race", "sinc", "--seed", "1"],
                 ["--seeds", "2"]):  # fmt: skip
        with pytest.raises(SystemExit):
            main(["flow", "--out", str(tmp_path), *argv])
        assert "--" in capsys.readouterr().err
