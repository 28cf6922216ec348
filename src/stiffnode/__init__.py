"""stiffnode: stiffness in neural networks seen as differential equations."""

from . import gradients, models, stats
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
    "get_solver",
    "gradients",
    "models",
    "solve",
    "stats",
]
