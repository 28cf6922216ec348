"""Experiments that reproduce and extend the seeds' tables."""

from . import seed_resnet

__all__ = ["seed_resnet"]
