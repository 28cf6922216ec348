"""stiffnode: stiffness in neural networks seen as differential equations.

The packages follow the pipeline, each importing only those before it:

- `models`: the ResNet and the neural ODEs its weights define;
- `solvers` (stiff solvers, controllers, statistics) and `problems` (stiff test problems),
  with the one entry point `solve` (and `solve_ensemble` for batches) beside them here;
- `stiffness`: stiffness proxies, Jacobians, Lanczos, the amortised spectral radius;
- `training`: losses, the training loop and its trainers, vmapped trials;
- `flow`: training as an ODE, the gradient flow solved by any solver;
- `node`: continuous normalising flows, regularised solves, time series, examples;
- `data`: datasets, toy densities, the POLLU ensemble;
- `studies`: the seed's ResNet study, the gradient-flow study, the optimizer race, Kim et
  al.'s stiff neural ODEs, the demo;
- `cli`: the `stiffnode` command; `checkpoints`: the files every resumable run writes.

The modules that lived at the top level (`stiffnode.train`, `stiffnode.cnf`, ...) stay
reachable under their old names as attributes.
"""

__version__ = "0.1.0"  # first: the studies record it

# `_xla_flags` first: it raises XLA:CPU's small-loop threshold before anything could start
# JAX's backends.
from . import _xla_flags  # noqa: F401, I001
from . import checkpoints, data, flow, models, node, problems, solvers, stiffness, studies, training
from .data import ensembles, toy_densities
from .models import AugmentedNeuralODE, MLPVectorField, NeuralODE, ResNet
from .node import cnf, crossing, gradients, regularizers, time_series
from .solve import SOLVERS, Solution, get_solver, solve
from .solve_ensemble import solve_ensemble
from .solvers import stats
from .training import losses, train, trials

__all__ = [
    "SOLVERS",
    "AugmentedNeuralODE",
    "MLPVectorField",
    "NeuralODE",
    "ResNet",
    "Solution",
    "checkpoints",
    "cnf",
    "crossing",
    "data",
    "ensembles",
    "flow",
    "get_solver",
    "gradients",
    "losses",
    "models",
    "node",
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
    "training",
    "trials",
]
