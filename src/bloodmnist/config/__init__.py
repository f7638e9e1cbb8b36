"""One Config dataclass tree. Defaults are the reference recipe; YAML files and `--set` override.

Precedence (lowest to highest): dataclass defaults, the recipe (`--recipe`; the CLI's default is
`DEFAULT_RECIPE`, or the defaults alone under a complete saved config: `base_recipe`),
`--config FILE.yaml`, dedicated CLI flags
(`--epochs`, `--seed`, ...), `--set key=value`. The resolved tree is saved in every run folder and
checkpoint, so a run can be repeated from its `config.yaml` alone.
"""

from bloodmnist.config.checks import check_train_on
from bloodmnist.config.resolve import (
    DEFAULT_RECIPE,
    HOW_TO_RUN,
    RECIPES,
    absolute_paths,
    apply_overrides,
    base_recipe,
    build_config,
    from_dict,
    is_saved_config,
    lacking_keys,
    load_yaml,
    nest,
    parse_override,
    recipe_dict,
    save_yaml,
    validate,
)
from bloodmnist.config.schema import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TORCHVISION_RESNET18_URL,
    AugmentConfig,
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    ScheduleConfig,
    TrainConfig,
)

__all__ = [
    "check_train_on",
    "DEFAULT_RECIPE",
    "HOW_TO_RUN",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RECIPES",
    "TORCHVISION_RESNET18_URL",
    "AugmentConfig",
    "Config",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "RuntimeConfig",
    "ScheduleConfig",
    "TrainConfig",
    "absolute_paths",
    "apply_overrides",
    "base_recipe",
    "build_config",
    "from_dict",
    "is_saved_config",
    "lacking_keys",
    "load_yaml",
    "nest",
    "parse_override",
    "recipe_dict",
    "save_yaml",
    "validate",
]
