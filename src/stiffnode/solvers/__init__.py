"""stiffnode's own diffrax solvers and solver wrappers."""

from .jump_aware import JumpAwareSolver

__all__ = ["JumpAwareSolver"]
