"""Data: the regression and classification datasets (`datasets`), 2-D toy densities for
continuous normalising flows (`toy_densities`), and the POLLU chemistry ensemble
(`ensembles`). The stiff ODE test problems are `stiffnode.problems`."""

from . import ensembles, toy_densities
from .datasets import Dataset, alpine02, alpine02_dataset, alpine02_function, digits_dataset

__all__ = [
    "Dataset",
    "alpine02",
    "alpine02_dataset",
    "alpine02_function",
    "digits_dataset",
    "ensembles",
    "toy_densities",
]
