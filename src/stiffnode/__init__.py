"""stiffnode: stiffness in neural networks seen as differential equations."""

from . import (
    cnf,
    crossing,
    data,
    ensembles,
    flow,
    gradients,
    losses,
    models,
    problems,
    regularizers,
    solvers,
    stats,
    stiffness,
    studies,
    time_series,
    toy_densities,
    train,
    trials,
)
from .models import AugmentedNeuralODE, MLPVectorField, NeuralODE, ResNet
from .solve import SOLVERS, Solution, get_solver, solve
from .solve_ensemble import solve_ensemble

__version__ = "0.1.0"

__all__ = [
    "SOLVERS",
    "AugmentedNeuralODE",
    "MLPVectorField",
    "NeuralODE",
    "ResNet",
    "Solution",
    "cnf",
    "crossing",
    "data",
    "ensembles",
    "flow",
    "get_solver",
    "gradients",
    "losses",
    "models",
    "problems",
    "regularizers",
    "solve",
    "solve_ensemble",
    "solvers",
    "stats",
    "stiffness",
    "studies",
    "time_series",
    "toy_densities",
    "train",
    "trials",
]
