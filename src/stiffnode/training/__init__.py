"""Training: the losses (`losses`), the one training loop (`loop`: history, progress,
divergence, checkpoint/resume), its trainers (`train`: `fit`, `fit_full_batch`), and many
ResNet initialisations vmapped at once (`trials`)."""

from . import loop, losses, train, trials
from .loop import DIVERGENCE_RATIO, TrainingDiverged, has_diverged, train_loop
from .losses import l2_norm, model_mse, mse, penalised_loss, rmse
from .train import fit, fit_full_batch
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
    "loop",
    "losses",
    "model_mse",
    "mse",
    "penalised_loss",
    "rmse",
    "train",
    "train_loop",
    "train_trials",
    "trials",
]
