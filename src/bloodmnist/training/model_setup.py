"""The model a run trains: built (with ImageNet weights where available), placed on the device
in the chosen memory format, SyncBatchNorm and DDP under torchrun."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from bloodmnist.config import Config
from bloodmnist.data.loader import Normalizer, to_tensor
from bloodmnist.errors import ConfigError
from bloodmnist.model import PRETRAINED_ARCHS, model_from_config
from bloodmnist.model.resnet import PretrainedInfo, resolve_pretrained
from bloodmnist.model.whiten import FIT_IMAGES, PatchWhitening, fit_to_data
from bloodmnist.runtime import Runtime, has_cxx_compiler, weights_dir
from bloodmnist.training.sync_bn import convert_sync_bn

log = logging.getLogger("bloodmnist")

# the classes torchvision's references treat as normalisation layers (SyncBatchNorm and ours
# for CPU ranks subclass _BatchNorm)
NORM_LAYERS = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


def prepare_model(cfg: Config, rt: Runtime) -> tuple[nn.Module, dict[str, Any]]:
    """Build the configured model (with ImageNet weights where they exist and are available),
    on the device."""
    if cfg.model.arch in PRETRAINED_ARCHS:
        state, info = resolve_pretrained(
            cfg.model.pretrained, cfg.model.pretrained_url, weights_dir()
        )
    else:  # nothing to download: no ImageNet weights exist for this architecture
        msg = f"training from scratch (no ImageNet weights exist for {cfg.model.arch})"
        state, info = None, PretrainedInfo(cfg.model.pretrained, False, None, msg)
    if info.used:
        log.info("pretrained: %s", info.message)
    elif cfg.model.pretrained == "auto" and cfg.model.arch in PRETRAINED_ARCHS:
        log.warning("pretrained: %s", info.message)
    else:
        log.info("pretrained: %s", info.message)
    model = model_from_config(cfg, state)
    if rt.distributed and cfg.train.sync_bn:
        model = convert_sync_bn(model, rt.device)
    memory = torch.channels_last if rt.channels_last else torch.preserve_format
    model = model.to(rt.device, memory_format=memory)
    return model, {
        "requested": info.requested,
        "used": info.used,
        "source": info.source,
        "message": info.message,
    }


def fit_model_to_data(model: nn.Module, cfg: Config, train_images) -> None:
    """Data-dependent layers (resnet9w's patch whitening) set from up to FIT_IMAGES training
    images spread evenly over the split (a file sorted by class still gives every class),
    normalised as the model sees them; a new run only (a resumed one has them in last.pt)."""
    if not any(isinstance(m, PatchWhitening) for m in model.modules()):
        return
    sample = train_images[:: max(1, len(train_images) // FIT_IMAGES)][:FIT_IMAGES]
    norm = Normalizer(cfg.data.mean, cfg.data.std, torch.device("cpu"), channels_last=False)
    fit_to_data(model, norm(to_tensor(sample, torch.device("cpu"))))
    log.info("patch whitening fitted to %d training images", len(sample))


def wrap_ddp(model: nn.Module, rt: Runtime) -> nn.Module:
    """DistributedDataParallel under torchrun; the model itself otherwise."""
    if not rt.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def compile_for_training(model: nn.Module, cfg: Config, rt: Runtime) -> nn.Module:
    """The module the training step calls: `model` itself, or with `runtime.compile` the same
    weights behind torch.compile. Static shapes: a run has two batch shapes (full and the
    epoch's last), each compiled once, where dynamic shapes would give slower generic kernels."""
    if not cfg.runtime.compile:
        return model
    if rt.device.type == "cpu" and not has_cxx_compiler():
        raise ConfigError(
            "runtime.compile=true needs a C++ compiler on a CPU (g++ or clang++, or $CXX): "
            "install one (e.g. apt install g++) or set runtime.compile=false"
        )
    # Start from a clean slate: compiled graphs are cached per code object (every ResNet9
    # shares one forward), so a process that trains run after run (a `tune` worker) would hit
    # dynamo's recompile limit and silently fall back to eager.
    torch._dynamo.reset()
    log.info("runtime.compile: the training step runs through torch.compile (compiled once)")
    return torch.compile(model, dynamic=False)


def sgd_param_groups(model: nn.Module, cfg: Config) -> list[dict[str, Any]]:
    """The optimiser's parameter groups: one, or, with `optim.norm_weight_decay` set, the
    normalisation layers' weights and biases apart with their own weight decay (torchvision's
    references call it --norm-weight-decay; decaying BatchNorm's scale only shrinks the next
    layer's input, which the following BatchNorm undoes)."""
    if cfg.optim.norm_weight_decay is None:
        return [{"params": list(model.parameters())}]
    norm: list[nn.Parameter] = []
    for module in model.modules():  # a DDP wrapper's modules() reaches the model inside
        if isinstance(module, NORM_LAYERS):
            norm.extend(module.parameters(recurse=False))
    norm_ids = {id(p) for p in norm}
    other = [p for p in model.parameters() if id(p) not in norm_ids]
    return [{"params": other}, {"params": norm, "weight_decay": cfg.optim.norm_weight_decay}]
