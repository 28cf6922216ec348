"""Models: the ResNet and the neural ODEs its weights define."""

from .neural_ode import AbstractNeuralODE, AugmentedNeuralODE, NeuralODE
from .resnet import ResNet
from .vector_field import MLPVectorField, ResidualVectorField
from .weights import (
    PARAMETERIZATIONS,
    AbstractLayerWeights,
    AbstractPiecewiseWeights,
    PiecewiseConstantWeights,
    PiecewiseLinearWeights,
    PolynomialWeights,
    layer_times,
)

__all__ = [
    "AbstractLayerWeights",
    "AbstractNeuralODE",
    "AbstractPiecewiseWeights",
    "AugmentedNeuralODE",
    "MLPVectorField",
    "NeuralODE",
    "PARAMETERIZATIONS",
    "PiecewiseConstantWeights",
    "PiecewiseLinearWeights",
    "PolynomialWeights",
    "ResNet",
    "ResidualVectorField",
    "layer_times",
]
