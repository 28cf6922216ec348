"""The seed's ResNet study: RES, RES L2 and RES stiff, many trials, medians of ER/GE/stiffness.

For each model, `trials` initialisations (seeds `seed, seed+1, ...`, shared by the models)
are trained together in one compiled program (`stiffnode.trials.train_trials`). Each
finished trial is written to `out/trials/<model>/trial_<seed>.npz` at once and never
recomputed; a running group is checkpointed every minute to `out/checkpoints/`, so a killed
study resumes where it stopped. Run as several JAX processes (`stiffnode.distributed`), the
trials are spread over every process's devices and the results are the same.
`out/summary.json` holds the medians over trials, `out/summary.csv` and `out/trials.csv` the
table and every trial, `out/evolution.png` the seed's evolution plots (median and quartiles
over trials).
"""

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoints
from .._validation import positive_int
from ..distributed import agree
from ..training.trials import PENALTIES, TrainConfig, train_trials

MODELS: dict[str, tuple[str, float]] = {
    "RES": ("none", 0.0),
    "RES L2": ("l2", 1e-5),
    "RES stiff": ("amortised", 1e-3),
}
"""Model name -> (penalty, lambda), as in the seed (RES stiff: spectral radius, 1e-3)."""

TASKS: dict[str, dict[str, Any]] = {
    "alpine02": dict(
        width=20, depth=10, batch_size=45, num_batches=20, epochs=10_000, trials=25, eval_every=50
    ),
    "pollu": dict(
        width=50, depth=16, batch_size=20, num_batches=100, epochs=1_000, trials=25, eval_every=10
    ),
}
"""The seed's settings per task (tanh, T = 1, Adam 1e-3 with reduce-on-plateau)."""

SEED_TABLE = {  # The seed's climate case, medians over 25 trials (its published table).
    "RES": {"penalty": 0.0, "ER": 5.4e-3, "GE": 3.9e-2, "stiffness": 3.52, "wall_time_s": 17903},
    "RES L2": {
        "penalty": 25.76,
        "ER": 1.2e-2,
        "GE": 3.7e-2,
        "stiffness": 2.61,
        "wall_time_s": 23547,
    },
    "RES stiff": {
        "penalty": 0.05,
        "ER": 1.2e-2,
        "GE": 3.8e-2,
        "stiffness": 0.05,
        "wall_time_s": 1848662,
    },
}


def _slug(model: str) -> str:
    return model.lower().replace(" ", "_")


def load_task(task: str, *, seed: int = 0, cache_dir=None, progress: bool = False):
    """The task's `Dataset`: Alpine02 (d = 2, 900/100) or the POLLU ensemble (1996/500)."""
    if task == "alpine02":
        from ..data.datasets import alpine02_dataset

        return alpine02_dataset(seed, 2, 900, 100)
    if task == "pollu":
        from ..data.ensembles import pollu_ensemble

        return pollu_ensemble(seed, 1996, 500, cache_dir=cache_dir, progress=progress)
    raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")


def _signature(task: str, config: TrainConfig) -> str:
    """What a trial file was trained with: a finished trial is reused only by the same study."""
    return json.dumps({"task": task, **dataclasses.asdict(config)}, sort_keys=True)


_TRIAL_ENTRIES = ("seed", "epochs", "wall_time_s", "group_wall_time_s", "group_size",
                  "diverged_at", "final_ER", "final_GE", "final_stiffness")  # fmt: skip


def _read_finished(path: Path, signature: str) -> dict[str, Any] | None:
    """The finished trial in `path`, or None if there is none (a damaged file is set aside
    with a warning and its trial recomputed); one of another study is an error."""
    loaded = checkpoints.load_or_set_aside(path, _TRIAL_ENTRIES)
    if loaded is None:
        return None
    arrays, meta = loaded
    stored = meta.get("study", "(none recorded)")
    if stored != signature:
        raise ValueError(
            f"{path} holds a trial of another study ({stored}; this one: {signature}); "
            "give a new output directory, or delete it to retrain"
        )
    return arrays


def _write_trial(path: Path, seed, result, i, group_size, signature: str):
    arrays = {f"history_{k}": v[i] for k, v in result.history.items()}
    arrays |= {f"final_{k}": np.asarray(v[i]) for k, v in result.final.items()}
    arrays |= dict(
        seed=seed,
        epochs=result.epochs,
        wall_time_s=result.wall_time_s / group_size,
        group_wall_time_s=result.wall_time_s,
        group_size=group_size,
        diverged_at=result.diverged_at[i],
    )
    checkpoints.save(path, arrays, {"study": signature})


def run_study(
    task: str = "pollu",
    *,
    out: str | os.PathLike,
    trials: int | None = None,
    epochs: int | None = None,
    seed: int = 0,
    stiff_penalty: str = "amortised",
    models: tuple[str, ...] = tuple(MODELS),
    group_size: int | None = None,
    eval_every: int | None = None,
    cache_dir=None,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Run (or resume) the study and write its files to `out`; return the summary.

    `trials`/`epochs` default to the task's seed settings (`TASKS`); `stiff_penalty` is
    the RES stiff proxy (a `trials.PENALTIES` name; the seed used Gelfand's formula,
    `"gelfand"`; default the amortised power iteration). `group_size` trials share one
    vmapped program (default all). Summary: per model, the medians over trials of ER and GE
    (MSE on the standardised train and test sets), `stiffness` (sum over layers of the
    Gelfand spectral radius, mean over 256 training samples) and `wall_time_s` (a group's
    training time divided by its number of trials, compilation included).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if stiff_penalty not in PENALTIES:
        raise ValueError(
            f"unknown stiffness penalty {stiff_penalty!r}; use one of {', '.join(PENALTIES)}"
        )
    for m in models:
        if m not in MODELS:
            raise ValueError(f"unknown model {m!r}; use some of {', '.join(MODELS)}")
    settings = TASKS[task]
    trials = positive_int("trials", settings["trials"] if trials is None else trials)
    epochs = positive_int("epochs", settings["epochs"] if epochs is None else epochs)
    eval_every = positive_int("eval_every", eval_every or settings["eval_every"])
    eval_every = math.gcd(epochs, eval_every)
    group_size = positive_int("group_size", group_size or trials)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_task(task, cache_dir=cache_dir, progress=progress)
    seeds = list(range(seed, seed + trials))

    results: dict[str, list[dict]] = {}
    for model in models:
        penalty, lam = MODELS[model]
        if model == "RES stiff":
            penalty = stiff_penalty
        config = TrainConfig(
            width=settings["width"],
            depth=settings["depth"],
            epochs=epochs,
            batch_size=settings["batch_size"],
            num_batches=settings["num_batches"],
            penalty=penalty,
            lam=lam,
            eval_every=eval_every,
        )
        signature = _signature(task, config)
        trial_dir = out / "trials" / _slug(model)
        trial_dir.mkdir(parents=True, exist_ok=True)
        path = {s: trial_dir / f"trial_{s:04d}.npz" for s in seeds}
        finished = {s: _read_finished(path[s], signature) for s in seeds}
        # All processes of a multi-process run train the same groups: process 0's view.
        done = agree(np.array([finished[s] is not None for s in seeds]))
        pending = [s for s, d in zip(seeds, done, strict=True) if not d]
        for s in pending:
            finished[s] = None
        for start in range(0, len(pending), group_size):
            group = pending[start : start + group_size]
            tag = hashlib.sha1(signature.encode()).hexdigest()[:8]  # a checkpoint of this study
            ckpt = out / "checkpoints" / f"{_slug(model)}_{group[0]}-{group[-1]}_{tag}.npz"
            ckpt.parent.mkdir(parents=True, exist_ok=True)
            result = train_trials(
                config,
                data,
                group,
                progress=progress,
                checkpoint=ckpt,
                description=f"{task} {model} ({len(group)} trials)",
                keep_models=False,  # (the trial files hold histories and final metrics)
            )
            for i, s in enumerate(group):
                _write_trial(path[s], s, result, i, len(group), signature)
                finished[s] = checkpoints.load(path[s])[0]
            # The group's checkpoint, and each process's of any layout (`process_checkpoint`)
            for f in ckpt.parent.glob(f"{ckpt.stem}*{ckpt.suffix}"):
                f.unlink(missing_ok=True)
        results[model] = [finished[s] for s in seeds]

    summary, details = _summarise(results, task, trials, epochs, stiff_penalty)
    checkpoints.write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    checkpoints.write_text(out / "details.json", json.dumps(details, indent=2) + "\n")
    _write_csv(out, results, summary)
    _plot(out / "evolution.png", results, task)
    return summary


def _converged(rs: list[dict]) -> list[dict]:
    """The trials that did not diverge (`train_trials`' `diverged_at == 0`)."""
    return [r for r in rs if int(r["diverged_at"]) == 0]


def _median(values) -> float | None:
    """The median, None (JSON null) when there is nothing to take it of."""
    return float(np.median(values)) if len(values) else None


def _summarise(results, task, trials, epochs, stiff_penalty):
    """Per model, medians over the trials that did not diverge, and how many did."""
    summary, details = (
        {},
        {
            "task": task,
            "trials": trials,
            "epochs": epochs,
            "stiff_penalty": stiff_penalty,
            "settings": TASKS[task],
            "models": {},
        },
    )
    for model, rs in results.items():
        ok = _converged(rs)
        row = {k: _median([float(r[f"final_{k}"]) for r in ok]) for k in ("ER", "GE", "stiffness")}
        row["wall_time_s"] = _median([float(r["wall_time_s"]) for r in rs])
        row["diverged"] = len(rs) - len(ok)
        summary[model] = row
        keys = [k[6:] for k in rs[0] if k.startswith("final_")]
        with np.errstate(invalid="ignore"):  # eigenvalue ratios may be inf
            details["models"][model] = {
                k: {
                    "median": _median(v),
                    "q25": float(np.quantile(v, 0.25)) if len(v) else None,
                    "q75": float(np.quantile(v, 0.75)) if len(v) else None,
                }
                for k in keys
                for v in [np.array([float(r[f"final_{k}"]) for r in ok])]
            }
        details["models"][model]["group_wall_time_s"] = sorted(
            {float(r["group_wall_time_s"]) for r in rs}
        )
        details["models"][model]["diverged_seeds"] = [
            int(r["seed"]) for r in rs if int(r["diverged_at"])
        ]
    return summary, details


def _write_csv(out: Path, results, summary):
    def number(x):
        return "" if x is None else f"{x:.6g}"

    lines = ["model,ER,GE,stiffness,wall_time_s,diverged"]
    lines += [
        f"{m},{number(r['ER'])},{number(r['GE'])},{number(r['stiffness'])},"
        f"{number(r['wall_time_s'])},{r['diverged']}"
        for m, r in summary.items()
    ]
    checkpoints.write_text(out / "summary.csv", "\n".join(lines) + "\n")
    keys = sorted(k[6:] for k in next(iter(results.values()))[0] if k.startswith("final_"))
    rows = ["model,seed," + ",".join(keys) + ",wall_time_s,diverged_at"]
    for m, rs in results.items():
        for r in rs:
            vals = ",".join(f"{float(r['final_' + k]):.6g}" for k in keys)
            rows.append(
                f"{m},{int(r['seed'])},{vals},{float(r['wall_time_s']):.6g},{int(r['diverged_at'])}"
            )
    checkpoints.write_text(out / "trials.csv", "\n".join(rows) + "\n")


def _plot(path: Path, results, task):
    """The seed's evolution plots: median and quartiles over the trials that did not diverge
    (drawn on a bare `Figure`: no pyplot, no backend chosen for the caller)."""
    from matplotlib.figure import Figure

    panels = [
        ("ER", "training error (MSE)", True),
        ("GE", "test error (MSE)", True),
        ("gelfand", "stiffness: sum over layers of rho (Gelfand)", False),
        ("l2_norm", "parameter L2 norm", False),
    ]
    fig = Figure(figsize=(11, 7.5), layout="constrained")
    axes = fig.subplots(2, 2)
    for ax, (key, title, log) in zip(axes.flat, panels, strict=True):
        for model, rs in results.items():
            ok = _converged(rs)
            if not ok:
                continue
            epochs = ok[0]["epochs"]
            v = np.stack([r[f"history_{key}"] for r in ok])
            ax.plot(epochs, np.median(v, 0), label=f"{model} ({len(ok)} of {len(rs)})")
            ax.fill_between(epochs, np.quantile(v, 0.25, 0), np.quantile(v, 0.75, 0), alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if log:
            ax.set_yscale("log")
        ax.legend()
    fig.suptitle(f"{task}: median and quartiles over the trials that did not diverge")
    fig.savefig(path, dpi=110)
