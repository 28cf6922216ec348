"""Standard stiff test problems, with the literature's tolerances and published references.

Each constructor returns a `StiffProblem` (`vector_field(t, y, args)` in jax, `y0`, `t0`,
`t1`, `args`, `rtol`, `atol`, `reference`); `rhs_numpy(problem)` and `jac_numpy(problem)`
give hand-written numpy versions for scipy/SUNDIALS baselines. Published references are from
the IVPtestset (Mazzia & Magherini, Bari test set for IVP solvers), as also shipped by the
deTestSet R package; independent scipy Radau / SUNDIALS CVODE references at tight
tolerance are in `tests/data/stiff_references.json`.
"""

from collections.abc import Callable

from ._base import StiffProblem, jac_numpy, rhs_numpy
from ._brusselator import BrusselatorField, brusselator_2d
from ._e5 import e5
from ._hires import hires
from ._orego import orego
from ._pollu import RATES as POLLU_RATES
from ._pollu import REACTIONS as POLLU_REACTIONS
from ._pollu import SPECIES as POLLU_SPECIES
from ._pollu import pollu
from ._robertson import RATES as ROBERTSON_RATES
from ._robertson import robertson
from ._van_der_pol import van_der_pol

PROBLEMS: dict[str, Callable[[], StiffProblem]] = {
    "robertson": robertson,
    "van_der_pol": van_der_pol,
    "hires": hires,
    "orego": orego,
    "e5": e5,
    "pollu": pollu,
    "brusselator_2d": brusselator_2d,
}
"""Problem name -> constructor; called with no arguments each gives the standard setting."""

__all__ = [
    "PROBLEMS",
    "POLLU_RATES",
    "POLLU_REACTIONS",
    "POLLU_SPECIES",
    "ROBERTSON_RATES",
    "BrusselatorField",
    "StiffProblem",
    "brusselator_2d",
    "e5",
    "hires",
    "jac_numpy",
    "orego",
    "pollu",
    "rhs_numpy",
    "robertson",
    "van_der_pol",
]
