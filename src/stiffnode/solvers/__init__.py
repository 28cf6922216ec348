"""stiffnode's own diffrax solvers and solver wrappers."""

from .bdf import BDF, BDFInterpolation, BDFState
from .bdf_controller import STAT_KEYS, BDFController, BDFStats, BDFStepReport
from .initial_step import initial_step_size
from .jump_aware import JumpAwareSolver
from .rosenbrock import RODAS3, Rodas3, RosenbrockTableau

__all__ = [
    "BDF",
    "STAT_KEYS",
    "BDFController",
    "BDFInterpolation",
    "BDFState",
    "BDFStats",
    "BDFStepReport",
    "JumpAwareSolver",
    "RODAS3",
    "Rodas3",
    "RosenbrockTableau",
    "initial_step_size",
]
