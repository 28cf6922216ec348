"""What every gradient-flow optimizer keeps: the updates made, the flow time reached and
the work done."""

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ..solvers.self_controlled import STAT_KEYS
from ..solvers.stats import NOT_COUNTED

FLOW_STAT_KEYS: tuple[str, ...] = (
    "num_steps",
    "num_accepted_steps",
    "num_rejected_steps",
    *STAT_KEYS,
)
"""The statistics a `gradient_flow` state accumulates (see `stiffnode.stats`). For the flow,
`num_vf_evals` counts gradient evaluations, `num_jac_evals` dense Hessians (or, matrix-free,
linearisation points), `num_jvp_evals` Hessian-vector products."""


class GradientFlowState(NamedTuple):
    """`count` windows solved, flow time `time` reached, and the work so far: `stats`
    summed over all windows, `window_stats` of the last one (keys `FLOW_STAT_KEYS`;
    `NOT_COUNTED` (-1) where the solver does not report a count)."""

    count: Int[Array, ""]
    time: Float[Array, ""]
    stats: dict[str, Int[Array, ""]]
    window_stats: dict[str, Int[Array, ""]]


def accumulate_stats(total: dict, window: dict) -> dict:
    """Sums the counts; a `NOT_COUNTED` window leaves the total `NOT_COUNTED`."""
    return {
        k: jnp.where((total[k] < 0) | (window[k] < 0), NOT_COUNTED, total[k] + window[k])
        for k in FLOW_STAT_KEYS
    }
