"""MAE backbone, classification head, fine-tuning modes (full / LoRA / QLoRA), checkpoints."""

from fedhar.model.adapters import (
    MODES,
    ParameterCount,
    count_parameters,
    frozen_weight_bytes,
    load_trainable_state_dict,
    prepare_for_finetune,
    trainable_bytes,
    trainable_state_dict,
    trainable_tensors,
)
from fedhar.model.checkpoint import CheckpointError, load_mae, load_trainable, save_mae, save_trainable
from fedhar.model.head import ClassificationHead, Classifier
from fedhar.model.mae import Encoder, MAEConfig, MaskedAutoencoder, count_encoder_parameters
from fedhar.model.training import (
    EpochStats,
    classification_metrics,
    evaluate,
    finetune_epoch,
    make_loader,
    predict,
    pretrain_step,
)

__all__ = [
    "MODES", "ParameterCount", "count_parameters", "frozen_weight_bytes", "load_trainable_state_dict",
    "prepare_for_finetune", "trainable_bytes", "trainable_state_dict", "trainable_tensors", "CheckpointError", "load_mae",
    "load_trainable", "save_mae", "save_trainable", "ClassificationHead", "Classifier", "Encoder",
    "MAEConfig", "MaskedAutoencoder", "count_encoder_parameters", "EpochStats", "classification_metrics",
    "evaluate", "finetune_epoch", "make_loader", "predict", "pretrain_step",
]
