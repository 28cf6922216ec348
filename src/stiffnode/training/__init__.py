"""Training: the losses (`losses`), the training loop and its trainers (`train`: `fit`,
`fit_full_batch`, divergence), and many ResNet initialisations vmapped at once (`trials`)."""

from . import losses, train, trials
from .losses import l2_norm, model_mse, mse, penalised_loss, rmse
from .train import DIVERGENCE_RATIO, TrainingDiverged, fit, fit_full_batch, has_diverged
from .trials import TrainConfig, TrialsResult, train_trials

__all__ = [
    "DIVERGENCE_RATIO",
    "TrainConfig",
    "TrainingDiverged",
    "TrialsResult",
    "fit",
    "fit_full_batch",
    "has_diverged",
    "l2_norm",
    "losses",
    "model_mse",
    "mse",
    "penalised_loss",
    "rmse",
    "train",
    "train_trials",
    "trials",
]
