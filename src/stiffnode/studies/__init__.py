"""Experiments that reproduce and extend the seeds' tables: the seed's ResNet study
(`seed_resnet`), gradient-flow training against optax (`flow_training`), and the demo the
`stiffnode` command runs by default (`demo`)."""

from . import demo, flow_training, seed_resnet

__all__ = ["demo", "flow_training", "seed_resnet"]
