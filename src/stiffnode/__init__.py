"""stiffnode: stiffness in neural networks seen as differential equations."""

from . import (
    cnf,
    crossing,
    data,
    gradients,
    models,
    problems,
    regularizers,
    solvers,
    stats,
    toy_densities,
    train,
)
from .models import AugmentedNeuralODE, MLPVectorField, NeuralODE, ResNet
from .solve import SOLVERS, Solution, get_solver, solve

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
    "get_solver",
    "gradients",
    "models",
    "problems",
    "regularizers",
    "solve",
    "solvers",
    "stats",
    "toy_densities",
    "train",
]
