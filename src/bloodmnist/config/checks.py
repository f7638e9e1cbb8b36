"""Cross-field checks of a resolved Config: what types alone cannot express."""

from __future__ import annotations

from bloodmnist.config.schema import Config
from bloodmnist.errors import ConfigError

Check = tuple[bool, str]  # (holds, the message when it does not)


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    checks = [*_model_optim_checks(cfg), *_data_augment_checks(cfg), *_run_checks(cfg)]
    checks += _temperature_checks(cfg)
    _raise_first([*checks, *_train_on_val_checks(cfg)])


def check_train_on(cfg: Config) -> None:
    """The train+val checks alone: `train --resume --epochs` re-checks them (more epochs may
    reach a two_phase schedule's plateau phase) without re-checking an old saved config."""
    _raise_first(_train_on_val_checks(cfg))


def _raise_first(checks: list[Check]) -> None:
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)


def _train_on_val_checks(cfg: Config) -> list[Check]:
    """data.train_on=train+val: the validation images are training images, so nothing in the
    run may be chosen or steered on validation accuracy."""
    if cfg.data.train_on != "train+val":
        return [(cfg.data.train_on == "train", "data.train_on must be train|train+val")]
    why = "with data.train_on=train+val validation is part of training"
    plateau = cfg.schedule.kind == "two_phase" and cfg.train.epochs > cfg.schedule.cosine_epochs
    teacher = (cfg.train.teacher or "").lower()
    return [
        (cfg.train.select == "last", f"{why}: set train.select=last (it cannot pick an epoch)"),
        (
            not plateau,
            f"{why}: schedule.kind=two_phase lowers the LR on its plateaus after epoch "
            f"{cfg.schedule.cosine_epochs}; use schedule.kind=onecycle",
        ),
        (
            not cfg.eval.temperature_scaling,
            f"{why}: set eval.temperature_scaling=false (a temperature fitted on images the model "
            "trained on would miscalibrate it; eval.temperature=T stores a fixed one, e.g. the "
            "recipe's train-only runs' temperature)",
        ),
        (
            not teacher.endswith(".npz"),
            f"{why}: a soft-label file has rows for the training split only; use a teacher run "
            "or ensemble folder",
        ),
    ]


def _temperature_checks(cfg: Config) -> list[Check]:
    """A fixed temperature (eval.temperature) or one fitted on validation, not both."""
    t, t_tta = cfg.eval.temperature, cfg.eval.temperature_tta
    return [
        (t is None or t > 0, "eval.temperature must be > 0 (or null: none fixed)"),
        (t_tta is None or t_tta > 0, "eval.temperature_tta must be > 0 (or null)"),
        (
            t_tta is None or t is not None,
            "eval.temperature_tta needs eval.temperature (the one-view T) as well",
        ),
        (t_tta is None or cfg.eval.tta, "eval.temperature_tta needs eval.tta=true (the TTA mean)"),
        (
            t is None or not cfg.eval.temperature_scaling,
            "eval.temperature fixes the temperature and eval.temperature_scaling fits one on "
            "validation: set one of them (eval.temperature_scaling=false or "
            "eval.temperature=null)",
        ),
    ]


def _model_optim_checks(cfg: Config) -> list[Check]:
    """The network and the optimiser."""
    # the registry is the one list of model names
    from bloodmnist.model.registry import ARCHS, PRETRAINED_ARCHS

    return [
        (cfg.optim.lr > 0, "optim.lr must be > 0"),
        (cfg.optim.batch_size > 0, "optim.batch_size must be > 0"),
        (cfg.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (
            cfg.optim.norm_weight_decay is None or cfg.optim.norm_weight_decay >= 0,
            "optim.norm_weight_decay must be >= 0 (or null: optim.weight_decay)",
        ),
        (cfg.optim.kind in ("sgd", "muon"), "optim.kind must be sgd|muon"),
        (cfg.optim.muon_lr > 0, "optim.muon_lr must be > 0"),
        (cfg.optim.muon_ns_steps >= 1, "optim.muon_ns_steps must be >= 1"),
        (cfg.optim.sam_rho >= 0, "optim.sam_rho must be >= 0 (0: plain steps)"),
        (cfg.optim.momentum >= 0, "optim.momentum must be >= 0"),
        (
            not cfg.optim.nesterov or cfg.optim.momentum > 0,
            "optim.nesterov needs optim.momentum > 0 (set optim.nesterov=false for none)",
        ),
        (cfg.model.arch in ARCHS, f"model.arch must be one of {', '.join(sorted(ARCHS))}"),
        (cfg.model.width > 0 and cfg.model.depth >= 0, "model.width must be > 0, depth >= 0"),
        (
            cfg.model.pretrained in ("auto", "none") or cfg.model.arch in PRETRAINED_ARCHS,
            f"model.pretrained=PATH loads torchvision ResNet-18 weights: model.arch must be one of "
            f"{', '.join(sorted(PRETRAINED_ARCHS))}",
        ),
        (cfg.model.num_classes > 1, "model.num_classes must be > 1"),
        (
            cfg.model.class_names is None or len(cfg.model.class_names) == cfg.model.num_classes,
            "model.class_names must list model.num_classes names",
        ),
        (
            cfg.model.stem in ("auto", "s1", "s2", "imagenet"),
            "model.stem must be auto|s1|s2|imagenet",
        ),
    ]


def _data_augment_checks(cfg: Config) -> list[Check]:
    """The data and its augmentation."""
    return [
        (cfg.data.size in (28, 64, 128, 224), "data.size must be one of 28, 64, 128, 224"),
        (cfg.data.subset is None or cfg.data.subset > 0, "data.subset must be > 0"),
        (
            len(cfg.data.mean) == 3 and len(cfg.data.std) == 3 and min(cfg.data.std) > 0,
            "data.mean and data.std need 3 values (R, G, B), each std > 0",
        ),
        (0 <= cfg.augment.hflip <= 1 and 0 <= cfg.augment.vflip <= 1, "flip p must be in [0,1]"),
        # a negative strength was read as off without a word (rotation's range is symmetric,
        # so a negative angle works there as its absolute value)
        (
            min(cfg.augment.brightness, cfg.augment.contrast, cfg.augment.saturation) >= 0,
            "augment.brightness, contrast and saturation must be >= 0 (0: off)",
        ),
        (cfg.augment.translate >= 0, "augment.translate must be >= 0 (pixels either way)"),
        (cfg.augment.mixup_alpha >= 0, "augment.mixup_alpha must be >= 0"),
        (0 < cfg.augment.crop_scale[0] <= cfg.augment.crop_scale[1] <= 1, "bad augment.crop_scale"),
        (
            0 < cfg.augment.crop_ratio[0] <= cfg.augment.crop_ratio[1],
            "augment.crop_ratio must be [low, high] with 0 < low <= high (aspect ratios)",
        ),
        (cfg.augment.cutout >= 0, "augment.cutout must be >= 0 (pixels, or a fraction < 1)"),
        (0 <= cfg.augment.cutout_p <= 1, "augment.cutout_p must be in [0,1]"),
        (cfg.augment.cutout_fill in ("zero", "mean"), "augment.cutout_fill must be zero|mean"),
        (
            cfg.augment.padding in ("zeros", "reflection", "border"),
            "augment.padding must be zeros|reflection|border",
        ),
        (0 <= cfg.augment.stain < 1, "augment.stain must be in [0,1)"),
        (cfg.augment.cutmix_alpha >= 0, "augment.cutmix_alpha must be >= 0"),
    ]


def _run_checks(cfg: Config) -> list[Check]:
    """Schedule, training, evaluation and runtime."""
    return [
        (cfg.eval.batch_size > 0, "eval.batch_size must be > 0"),
        (cfg.runtime.threads >= 0, "runtime.threads must be >= 0 (0: all cores)"),
        (cfg.train.epochs > 0, "train.epochs must be > 0"),
        (cfg.runtime.device in ("auto", "cpu", "cuda"), "runtime.device must be auto|cpu|cuda"),
        (
            cfg.runtime.precision in ("auto", "fp32", "bf16", "fp16"),
            "runtime.precision must be auto|fp32|bf16|fp16",
        ),
        (cfg.schedule.kind in ("two_phase", "onecycle"), "schedule.kind: two_phase|onecycle"),
        (0 < cfg.schedule.pct_start < 1, "schedule.pct_start must be in (0,1)"),
        (
            cfg.schedule.div_factor > 0 and cfg.schedule.final_div_factor > 0,
            "schedule.div_factor and schedule.final_div_factor must be > 0",
        ),
        (
            cfg.schedule.t_max > 0 and cfg.schedule.cosine_epochs >= 0,
            "schedule.t_max must be > 0, schedule.cosine_epochs >= 0",
        ),
        (0 < cfg.schedule.plateau_factor < 1, "schedule.plateau_factor must be in (0,1)"),
        (cfg.schedule.plateau_patience >= 0, "schedule.plateau_patience must be >= 0"),
        (cfg.schedule.eta_min >= 0, "schedule.eta_min must be >= 0"),
        (
            0 <= cfg.schedule.base_momentum <= cfg.schedule.max_momentum < 1,
            "schedule.base_momentum <= schedule.max_momentum must lie in [0,1)",
        ),
        (0 <= cfg.train.ema_decay < 1, "train.ema_decay must be in [0,1)"),
        (0 <= cfg.train.label_smoothing < 1, "train.label_smoothing must be in [0,1)"),
        (0 <= cfg.train.seed < 2**32, "train.seed must be in [0, 2**32)"),
        (cfg.train.early_stop_patience >= 1, "train.early_stop_patience must be >= 1 (epochs)"),
        (cfg.train.select in ("best", "last"), "train.select must be best|last"),
        (
            cfg.eval.tta_mode in ("reference7", "dihedral8", "dihedral16", "dihedral24"),
            "eval.tta_mode: reference7|dihedral8|dihedral16|dihedral24",
        ),
        (cfg.eval.tta_blur_sigma > 0, "eval.tta_blur_sigma must be > 0"),
        (cfg.eval.tta_scale > 0, "eval.tta_scale must be > 0 (a zoom factor; < 0 turned it)"),
        (cfg.eval.tta_noise_std >= 0, "eval.tta_noise_std must be >= 0"),
        (0 <= cfg.train.distill_alpha <= 1, "train.distill_alpha must be in [0,1]"),
        (cfg.train.distill_temperature > 0, "train.distill_temperature must be > 0"),
    ]
