"""Model zoo, Classifier construction, safetensors checkpoints and user model sources."""

from bastion.models.checkpoint import (
    build_classifier,
    load_classifier,
    read_metadata,
    save_classifier,
)
from bastion.models.loading import ModelSource, load_model
from bastion.models.zoo import create, names

__all__ = ["ModelSource", "build_classifier", "create", "load_classifier", "load_model", "names",
           "read_metadata", "save_classifier"]
