"""stiffnode's own diffrax solvers, their controllers and solver wrappers."""

from .auto_switch import AutoSwitch, AutoSwitchState, SwitchStats
from .bdf import BDF, BDFInterpolation, BDFState
from .controllers import (
    BDFController,
    BDFStats,
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
    RosenbrockState,
    RosenbrockTableau,
)
from .self_controlled import (
    FROM_CONTROLLER,
    STAT_KEYS,
    AbstractSelfControlledSolver,
    ControllerTolerances,
    ReportingNorm,
    StepReport,
)
from .solve_setup import for_solve
from .stiffness_estimate import StiffnessMonitor, explicit_stiffness, stability_boundary

__all__ = [
    "AUTO_MAX_DIRECTIONS",
    "ForwardSensitivity",
    "forward_sensitivities",
    "AutoSwitch",
    "AutoSwitchState",
    "SwitchStats",
    "StiffnessMonitor",
    "explicit_stiffness",
    "for_solve",
    "stability_boundary",
    "BDF",
    "FROM_CONTROLLER",
    "RODAS3",
    "RODAS5P",
    "STAT_KEYS",
    "AbstractRodas",
    "AbstractRosenbrock",
    "AbstractSelfControlledSolver",
    "BDFController",
    "BDFInterpolation",
    "BDFState",
    "BDFStats",
    "ControllerTolerances",
    "CountingController",
    "InterpolatingAdjoint",
    "JumpAwareSolver",
    "NonFiniteMonitor",
    "ReportingNorm",
    "Rodas3",
    "Rodas5P",
    "RodasInterpolation",
    "Rosenbrock23",
    "Rosenbrock23Interpolation",
    "RosenbrockState",
    "RosenbrockTableau",
    "SolverStats",
    "SolverStepController",
    "StepReport",
    "initial_step_size",
    "solver_stats_of",
]
