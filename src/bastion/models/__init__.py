"""Model zoo, Classifier construction and safetensors checkpoints."""

from bastion.models.checkpoint import (
    build_classifier,
    load_classifier,
    read_metadata,
    save_classifier,
)
from bastion.models.zoo import create, names

__all__ = ["build_classifier", "create", "load_classifier", "names", "read_metadata", "save_classifier"]
