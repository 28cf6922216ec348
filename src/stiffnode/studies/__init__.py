"""Experiments that reproduce and extend the seeds' tables: the seed's ResNet study
(`seed_resnet`), gradient-flow training against optax (`flow_training`; its table and
plots in `flow_report`), the default flow against L-BFGS, Levenberg-Marquardt and Adam
(`optimizer_race`), Kim et al.'s stiff neural ODEs (`stiff_kinetics`), and the demo the
`stiffnode` command runs by default (`demo`)."""

from . import demo, flow_report, flow_training, optimizer_race, seed_resnet, stiff_kinetics

__all__ = ["demo", "flow_report", "flow_training", "optimizer_race", "seed_resnet",
           "stiff_kinetics"]  # fmt: skip
