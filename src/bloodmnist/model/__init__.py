"""Models: a registry by name (`model.arch`), FLOP counting, ImageNet weight transfer."""

from bloodmnist.model.registry import ARCHS, PRETRAINED_ARCHS, build_model, model_from_config

__all__ = ["ARCHS", "PRETRAINED_ARCHS", "build_model", "model_from_config"]
