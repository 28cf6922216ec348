"""Neural ODEs beyond `models`: continuous normalising flows (`cnf`), regularised solves
(`regularizers`: kinetic energy, Jacobian Frobenius norm, solver heuristics, stiffness),
fitting time series (`time_series`), stiff kinetics learned from a trajectory
(`stiff_kinetics`), the crossing-trajectories example (`crossing`), and the gradients of a
ResNet against its neural ODE's (`gradients`)."""

from . import cnf, crossing, gradients, regularizers, stiff_kinetics, time_series

__all__ = ["cnf", "crossing", "gradients", "regularizers", "stiff_kinetics", "time_series"]
