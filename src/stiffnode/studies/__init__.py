"""Experiments that reproduce and extend the seeds' tables: the seed's ResNet study
(`seed_resnet`), gradient-flow training against optax (`flow_training`; its table and
plots in `flow_report`), and the demo the `stiffnode` command runs by default (`demo`)."""

from . import demo, flow_report, flow_training, seed_resnet

__all__ = ["demo", "flow_report", "flow_training", "seed_resnet"]
