"""The Config dataclass tree; its defaults are the reference recipe."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_RESNET18_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"


@dataclass
class DataConfig:
    path: str | None = None  # local npz; None downloads the official file into the cache
    size: int = 28
    subset: int | None = None  # keep the first N samples of every split (smoke runs)
    # what the model trains on: train | train+val (the validation images too, after a recipe
    # was chosen on them: 14% more images; validation numbers are then not held out, so
    # nothing may be chosen or fitted on them: train.select=last, no plateau phase, no tuning,
    # no temperature scaling)
    train_on: str = "train"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


@dataclass
class AugmentConfig:
    hflip: float = 0.5
    vflip: float = 0.0
    rotation: float = 10.0  # degrees, uniform in [-r, r]
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    crop_scale: tuple[float, float] = (0.9, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    mixup_alpha: float = 0.001
    rot90: bool = False  # random k*90 deg turns; with both flips: the dihedral group (opt-in)
    translate: float = 0.0  # random shift of up to this many pixels in x and y (black fill)
    # what the geometry fills outside the source image with: zeros (black, the reference's),
    # reflection (mirrors the smear's background, so rotations leave no black corners) or border
    padding: str = "zeros"
    # Cutout / random erasing: a square of `cutout` pixels (>= 1) or image-side fraction (< 1),
    # inside the image, with probability cutout_p; filled with black (zero) or the image's mean
    cutout: float = 0.0
    cutout_p: float = 1.0
    cutout_fill: str = "zero"  # zero | mean
    cutmix_alpha: float = 0.0  # CutMix, lambda ~ Beta(a, a) per batch; with MixUp: 50/50 each
    # stain jitter: per image, each H/E/DAB optical density x U(1-s, 1+s) + U(-s, s) (0: off)
    stain: float = 0.0


@dataclass
class ModelConfig:
    arch: str = "resnet18"  # a name in bloodmnist.model.ARCHS
    num_classes: int = 8
    width: float = 1.0  # channel multiplier (resnet9)
    depth: int = 1  # residual blocks per residual stage (resnet9)
    pretrained: str = "auto"  # auto | none | PATH to a torchvision-layout state_dict
    pretrained_url: str = TORCHVISION_RESNET18_URL
    # stem: auto (per data.size and arch, model/stems.py) | s1 (3x3 stride 1, no max-pool)
    # | s2 (3x3 stride 2, no max-pool) | imagenet (7x7 stride 2 + 3x3/2 max-pool)
    stem: str = "auto"
    # Class names, label 0 first; set from the npz when it stores them (`bloodmnist data
    # build`), else None: BloodMNIST's eight names
    class_names: list[str] | None = None

    def names(self) -> tuple[str, ...]:
        """The class names reports and `predict` show, one per model output."""
        from bloodmnist import default_class_names

        if self.class_names:
            return tuple(self.class_names)
        return default_class_names(self.num_classes)


@dataclass
class OptimConfig:
    lr: float = 0.008
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    # weight decay of the normalisation layers' scales and shifts (None: weight_decay, as the
    # reference; torchvision's recipes use 0)
    norm_weight_decay: float | None = None
    batch_size: int = 128  # global batch (split across ranks under torchrun)
    # sgd | muon: the convolution filters take Muon's orthogonalised steps of relative size
    # muon_lr at a fixed norm (no weight decay); everything else SGD as above (training/optim.py)
    kind: str = "sgd"
    muon_lr: float = 0.02
    # Newton-Schulz iterations per Muon step (Muon's products scale with it; the coefficients
    # are tuned for 5, so fewer also change the update, not just its cost)
    muon_ns_steps: int = 5
    # sharpness-aware minimisation: each step's gradient is taken at the weights moved rho along
    # the normalised gradient (0: off). Two forward and backward passes per step
    # (training/sam.py; train_pflop counts both). On fast v8, 0.05 and 0.1 lowered validation
    # accuracy (docs/levers.md), so no recipe sets it
    sam_rho: float = 0.0


@dataclass
class ScheduleConfig:
    kind: str = "two_phase"  # two_phase (reference) | onecycle (per-step, peak LR = optim.lr)
    cosine_epochs: int = 33  # cosine annealing drives epochs 1..cosine_epochs
    t_max: int = 90
    eta_min: float = 1e-4
    plateau_factor: float = 0.5  # then ReduceLROnPlateau on validation accuracy
    plateau_patience: int = 3
    pct_start: float = 0.25  # onecycle: share of the steps spent warming up
    div_factor: float = 25.0  # onecycle: start LR = optim.lr / div_factor
    final_div_factor: float = 1e4  # onecycle: final LR = start LR / final_div_factor
    # onecycle: torch's OneCycleLR also moves every group's momentum against the LR, from
    # max_momentum at the start to base_momentum at the peak LR and back; optim.momentum is then
    # not used (it is with cycle_momentum false, and under two_phase)
    cycle_momentum: bool = True
    base_momentum: float = 0.85
    max_momentum: float = 0.95


@dataclass
class TrainConfig:
    epochs: int = 60
    early_stop_patience: int = 15
    # Which epoch best.pt (what is tested and shipped) holds: best (highest val_acc, the
    # reference) | last (the final epoch: for schedules that anneal to ~0, the annealed model,
    # not a lucky mid-run peak of 1,712 noisy validation images; no early stopping)
    select: str = "best"
    seed: int = 42
    deterministic: bool = True
    sync_bn: bool = False
    label_smoothing: float = 0.0
    # EMA of weights and BN buffers per step (0 = off); validation, best.pt and test use the EMA
    ema_decay: float = 0.0
    # Knowledge distillation: a run folder (checkpoints/best.pt) or an ensemble folder whose
    # members' mean probabilities at `distill_temperature` are the soft labels, or a soft-label
    # file (.npz, one row per training image: training/soft_labels.py, benchmarks/crossfit.py);
    # loss = alpha * KL * T^2 + (1 - alpha) * CE(true labels)
    teacher: str | None = None
    distill_alpha: float = 0.5
    distill_temperature: float = 4.0


@dataclass
class EvalConfig:
    tta: bool = True
    # reference7 (the reference's 7 views) | dihedral8 (D4 poses) | dihedral16 (D4 poses, each
    # also zoomed by tta_scale) | dihedral24 (dihedral16 plus each pose blurred by tta_blur_sigma)
    tta_mode: str = "reference7"
    # also the other TTA mode on val and test (*_tta_<other>), so the mode can be chosen on
    # validation; false skips those 7-8 extra passes per split (slow CPUs, tests)
    compare_tta: bool = True
    batch_size: int = 512
    tta_translate: float = 2.0  # pixels
    tta_scale: float = 1.1
    tta_blur_sigma: float = 0.4
    tta_noise_std: float = 0.01  # in [0,1] pixel units, from a seeded generator
    tta_seed: int = 0
    # fit a softmax temperature on validation (best.pt) and report test calibration before/after;
    # the temperatures are stored in best.pt, and predict/serve/export/explain apply them
    temperature_scaling: bool = False
    # or fixed temperatures instead of fitting them (a run trained on train+val has no held-out
    # images to fit on: take them from train-only runs of the same recipe); stored and applied
    # as fitted ones; temperature_tta None: the one-view T for the TTA mean too
    temperature: float | None = None
    temperature_tta: float | None = None
    # false: no test evaluation at the end (hyper-parameter search trials see validation only)
    final_test: bool = True


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    threads: int = 0  # 0: all cores this process may use
    out: str = "runs"
    name: str = "resnet18"
    # false skips figures and reports at the end of a run (sweeps, tests); `bloodmnist report
    # RUN_DIR` builds them later from the run folder alone
    reports: bool = True
    # false: no RUN_DIR/tb/ TensorBoard event files (history.csv and the reports remain)
    tensorboard: bool = True
    # true: the training step's forward and backward run through torch.compile (inductor;
    # on a CPU it needs a C++ compiler). The weights, checkpoints, validation and evaluation
    # are the same eager model; the graphs are compiled once per run (docs/benchmarks.md).
    compile: bool = False


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists) for YAML, JSON and checkpoints."""
        return _plain(asdict(self))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj
