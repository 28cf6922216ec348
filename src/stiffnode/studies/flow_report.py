"""The flow study's report: the markdown table and the plots of `flow_training.run_study`'s
summary and histories."""

from pathlib import Path
from typing import Any

import numpy as np


def _opt(d: dict, key: str, fmt: str) -> str:
    return format(d[key], fmt) if d.get(key) is not None else "—"


def table(summary: dict[str, Any]) -> str:
    """A markdown table of the methods: work and time to the target, final figures."""
    task = summary["task"]
    lines = [
        f"**{task['name']}**: {task['description']}; target: Adam's train loss after "
        f"{task['updates']} updates, {task.get('target_loss', float('nan')):.3e}.",
        "",
        "| method | setting | grads to target | HVPs to target | wall s to target | "
        "final train loss | test | grads | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in summary.items():
        if name in ("task", "seed"):
            continue
        if "skipped" in e:
            lines.append(f"| {name} | skipped: {e['skipped']} |" + " |" * 7)
            continue
        setting = (
            f"lr {e['learning_rate']:g}"
            if e["kind"] == "optax"
            else f"rtol=atol={e['rtol']:g}, windows {e['window']}"
        )
        t = e.get("to_target") or {}
        lines.append(
            f"| {name} | {setting} | {_opt(t, 'grad_evals', ',')} | "
            f"{_opt(t, 'num_jvp_evals', ',')} | {_opt(t, 'wall_time', '.2f')} | "
            f"{e['final_train_loss']:.3e} | {e['test_metric']:.4g} | {e['grad_evals']:,} | "
            f"{e['wall_time']:.2f} |"
        )
    seed = summary.get("seed")
    if seed:
        lines += [
            "",
            f"Seed setting: the same flow from the same start to t = {seed['flow_time']:g}, "
            f"rtol {seed['rtol']:g}, atol {seed['atol']:g}; stiffnode BDF "
            f"{seed['stiffnode_bdf']['wall_time']:.3f} s.",
            "",
            "| scipy | Jacobian | finished | t reached | grads | wall s | speedup of stiffnode |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, e in seed.items():
            if not name.startswith("scipy_"):
                continue
            speed = (
                f"{e['speedup']:.0f}x"
                if "speedup" in e
                else f"{e['speedup_to_t_reached']:.0f}x (to t reached)"
                if "speedup_to_t_reached" in e
                else "—"
            )
            lines.append(
                f"| {e['method']} | {e['jacobian']} | {e['finished']} | {e['t_reached']:.3g} | "
                f"{e['num_grad_evals']:,} | {e['wall_time']:.2f} | {speed} |"
            )
    return "\n".join(lines) + "\n"


def plot_study(summary: dict[str, Any], histories: dict[str, dict], out: Path):
    """`loss.png` (train loss against gradient evaluations and wall time), `stiffness.png`
    (the Hessian's extreme eigenvalues along the flows), `solver_stats.png` (drawn on bare
    `Figure`s: no pyplot, no backend chosen for the caller)."""
    from matplotlib.figure import Figure

    def figure(figsize):
        return Figure(figsize=figsize, layout="constrained")

    target = summary["task"].get("target_loss")
    fig = figure((12, 4.5))
    axes = fig.subplots(1, 2)
    for name, h in histories.items():
        x_grad = np.asarray(h["grad_evals"], float)
        if "num_jvp_evals" in h:  # a Hessian-vector product costs about two gradients
            x_grad = x_grad + 2 * np.asarray(h["num_jvp_evals"], float)
        style = "-" if name.startswith("flow") else "--"
        axes[0].loglog(np.maximum(x_grad, 1), h["loss"], style, label=name)
        axes[1].loglog(np.maximum(h["wall_time"], 1e-3), h["loss"], style, label=name)
    for ax, xlabel in zip(
        axes,
        (
            "gradient evaluations (+ 2 per Hessian-vector product)",
            "wall time [s] (after compilation)",
        ),
        strict=True,
    ):
        if target is not None:
            ax.axhline(target, color="k", lw=0.8, ls=":", label="Adam's final loss")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("train loss")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(summary["task"]["description"])
    fig.savefig(out / "loss.png", dpi=120)

    flows = {k: h for k, h in histories.items() if "hessian_max" in h}
    if flows:
        fig = figure((6.5, 4.5))
        ax = fig.subplots()
        for name, h in flows.items():
            rows = [i for i, v in enumerate(h["hessian_max"]) if v is not None]
            t = np.asarray([h["flow_time"][i] for i in rows])
            ax.semilogx(
                np.maximum(t, 1e-2),
                [h["hessian_max"][i] for i in rows],
                "-o",
                ms=3,
                label=f"{name}: lambda_max",
            )
            ax.semilogx(
                np.maximum(t, 1e-2),
                [h["hessian_min"][i] for i in rows],
                ":",
                label=f"{name}: lambda_min",
            )
        ax.set_xlabel("flow time t")
        ax.set_ylabel("Hessian eigenvalue (Lanczos)")
        ax.set_title("stiffness of the flow along the trajectory")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
        fig.savefig(out / "stiffness.png", dpi=120)

    stats = {
        k: e["solver_stats"]
        for k, e in summary.items()
        if isinstance(e, dict) and "solver_stats" in e
    }
    if stats:
        keys = [
            "num_steps",
            "num_rejected_steps",
            "num_vf_evals",
            "num_jvp_evals",
            "num_jac_evals",
            "num_lu_decompositions",
            "num_newton_iters",
            "num_newton_failures",
        ]
        fig = figure((9, 4.5))
        ax = fig.subplots()
        width = 0.8 / len(stats)
        for i, (name, s) in enumerate(stats.items()):
            values = [max(s.get(k, 0), 0) + 1e-1 for k in keys]
            ax.bar(np.arange(len(keys)) + i * width, values, width, label=name)
        ax.set_xticks(
            np.arange(len(keys)) + 0.4 - width / 2, [k[4:] for k in keys], rotation=30, ha="right"
        )
        ax.set_yscale("log")
        ax.set_title("solver statistics over the whole run (-1 = not counted, shown as 0)")
        ax.legend(fontsize=8)
        fig.savefig(out / "solver_stats.png", dpi=120)
