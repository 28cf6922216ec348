"""stiffnode's own diffrax solvers, their controllers and solver wrappers."""

from .auto_switch import AutoSwitch, SwitchStats
from .bdf import BDF, BDFInterpolation
from .controllers import (
    CountingController,
    NonFiniteMonitor,
    SolverStats,
    SolverStepController,
    solver_stats_of,
)
from .forward_sensitivity import AUTO_MAX_DIRECTIONS, ForwardSensitivity, forward_sensitivities
from .initial_step import initial_step_size
from .interpolating_adjoint import InterpolatingAdjoint
from .jump_aware import JumpAwareSolver
from .rosenbrock import (
    RODAS3,
    RODAS5P,
    AbstractRodas,
    AbstractRosenbrock,
    Rodas3,
    Rodas5P,
    RodasInterpolation,
    Rosenbrock23,
    Rosenbrock23Interpolation,
    RosenbrockTableau,
)
from .self_controlled import AbstractSelfControlledSolver, ControllerTolerances
from .solve_setup import for_solve
from .stiffness_estimate import StiffnessMonitor, explicit_stiffness, stability_boundary

__all__ = [
    "AUTO_MAX_DIRECTIONS",
    "ForwardSensitivity",
    "forward_sensitivities",
    "AutoSwitch",
    "SwitchStats",
    "StiffnessMonitor",
    "explicit_stiffness",
    "for_solve",
    "stability_boundary",
    "BDF",
    "RODAS3",
    "RODAS5P",
    "AbstractRodas",
    "AbstractRosenbrock",
    "AbstractSelfControlledSolver",
    "BDFInterpolation",
    "ControllerTolerances",
    "CountingController",
    "InterpolatingAdjoint",
    "JumpAwareSolver",
    "NonFiniteMonitor",
    "Rodas3",
    "Rodas5P",
    "RodasInterpolation",
    "Rosenbrock23",
    "Rosenbrock23Interpolation",
    "RosenbrockTableau",
    "SolverStats",
    "SolverStepController",
    "initial_step_size",
    "solver_stats_of",
]
