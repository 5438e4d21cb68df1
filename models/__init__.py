"""Model zoo and training.

Public API::

    from . import (ModalityDims, FusionInputs, FusionOutput, FusionModel,
                                    available, build, build_from_config, load_hparams,
                                    save_checkpoint, load_checkpoint)

Models (registry names): almt, kuda, msfn, mldfa, tfn, lmf, mult. Metrics: ``models.metrics``.
"""

from .base import (
    DEFAULT_DIMS,
    MODALITIES,
    FusionInputs,
    FusionModel,
    FusionOutput,
    ModalityDims,
    lengths_to_mask,
    masked_mean,
    task_loss,
)
from .registry import (
    available,
    build,
    build_from_config,
    load_checkpoint,
    load_config,
    load_hparams,
    load_train_config,
    read_checkpoint_metadata,
    register,
    save_checkpoint,
)

__all__ = [
    "DEFAULT_DIMS",
    "MODALITIES",
    "FusionInputs",
    "FusionModel",
    "FusionOutput",
    "ModalityDims",
    "lengths_to_mask",
    "masked_mean",
    "task_loss",
    "available",
    "build",
    "build_from_config",
    "load_checkpoint",
    "load_config",
    "load_hparams",
    "load_train_config",
    "read_checkpoint_metadata",
    "register",
    "save_checkpoint",
]
