"""Config tree: reference defaults, YAML and `--set` overrides, coercion, one-line errors."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bloodmnist.config import (
    AugmentConfig,
    Config,
    build_config,
    from_dict,
    load_yaml,
    parse_override,
    save_yaml,
)
from bloodmnist.errors import BloodMNISTError, ConfigError


def test_defaults_are_the_reference_recipe() -> None:
    cfg = Config()
    assert cfg.optim.lr == 0.008
    assert cfg.optim.momentum == 0.9
    assert cfg.optim.weight_decay == 5e-4
    assert cfg.optim.batch_size == 128
    assert cfg.schedule.cosine_epochs == 33
    assert cfg.schedule.t_max == 90
    assert cfg.schedule.eta_min == 1e-4
    assert cfg.schedule.plateau_factor == 0.5
    assert cfg.schedule.plateau_patience == 3
    assert cfg.train.epochs == 60
    assert cfg.train.early_stop_patience == 15
    assert cfg.train.seed == 42
    assert cfg.augment.mixup_alpha == 0.001
    assert cfg.augment.crop_scale == (0.9, 1.0)
    assert cfg.augment.crop_ratio == pytest.approx((3 / 4, 4 / 3))
    assert cfg.augment.rotation == 10.0
    assert (cfg.augment.brightness, cfg.augment.contrast, cfg.augment.saturation) == (0.2,) * 3
    assert cfg.augment.hflip == 0.5
    assert cfg.augment.vflip == 0.0
    assert cfg.eval.tta is True
    assert cfg.model.num_classes == 8
    assert cfg.model.pretrained == "auto"
    assert cfg.data.size == 28
    assert cfg.data.subset is None
    assert build_config() == cfg  # no inputs: exactly the defaults


def _yaml(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_overrides_only_the_keys_it_names(tmp_path: Path) -> None:
    path = _yaml(
        tmp_path,
        "optim:\n  lr: 0.02\n  batch_size: 64\ntrain:\n  epochs: 5\n"
        "augment:\n  crop_scale: [0.8, 1.0]\n",
    )
    cfg = build_config(path)
    assert cfg.optim.lr == 0.02 and cfg.optim.batch_size == 64
    assert cfg.train.epochs == 5
    assert cfg.augment.crop_scale == (0.8, 1.0)
    assert isinstance(cfg.augment.crop_scale, tuple)
    assert cfg.optim.momentum == 0.9 and cfg.train.seed == 42  # untouched


def test_precedence_defaults_yaml_flags_set(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "train:\n  epochs: 5\n  seed: 7\n  early_stop_patience: 4\n")
    # YAML beats defaults; flags beat YAML; --set beats flags; None flags are "not given".
    cfg = build_config(
        path,
        flags={"train.epochs": 9, "train.seed": 11, "data.subset": None},
        overrides=["train.seed=13"],
    )
    assert cfg.train.early_stop_patience == 4  # YAML only
    assert cfg.train.epochs == 9  # flag over YAML
    assert cfg.train.seed == 13  # --set over flag and YAML
    assert cfg.data.subset is None  # a None flag does not override
    assert cfg.optim.lr == 0.008  # default


@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [
        ("optim.lr=1", ("optim", "lr"), 1.0),  # int -> float
        ("train.epochs=3.0", ("train", "epochs"), 3),  # integral float -> int
        ("data.subset=null", ("data", "subset"), None),
        ("data.subset=64", ("data", "subset"), 64),
        ("eval.tta=false", ("eval", "tta"), False),
        ("model.pretrained=123", ("model", "pretrained"), "123"),  # number -> string
        ("augment.crop_scale=[0.5, 1]", ("augment", "crop_scale"), (0.5, 1.0)),
        ("data.path=/x/y.npz", ("data", "path"), "/x/y.npz"),
    ],
)
def test_set_coerces_types(override: str, key: tuple[str, str], expected: object) -> None:
    cfg = build_config(overrides=[override])
    value = getattr(getattr(cfg, key[0]), key[1])
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("optim.lrr=0.1", "optim.lrr"),  # unknown key
        ("nosuch.lr=0.1", "nosuch"),  # unknown section
        ("train.epochs=abc", "train.epochs"),  # wrong type
        ("train.epochs=2.5", "train.epochs"),  # not an integer
        ("eval.tta=1", "eval.tta"),  # not a bool
        ("optim.lr=nan", "optim.lr"),  # NaN for a float
        ("optim.lr=.inf", "optim.lr"),  # infinite
        ("optim.lr=[1, 2]", "optim.lr"),  # list for a float
        ("augment.crop_scale=[0.5]", "augment.crop_scale"),  # wrong tuple length
        ("optim=3", "optim"),  # a value where a section belongs
        ("optim.lr", "optim.lr"),  # no '='
    ],
)
def test_bad_override_is_a_config_error_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)) as info:
        build_config(overrides=[override])
    assert "\n" not in str(info.value)
    assert isinstance(info.value, BloodMNISTError) and info.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("optim: 5\n", "optim"),  # bad section
        ("optim:\n  lr: .nan\n", "optim.lr"),
        ("train:\n  epochs: many\n", "train.epochs"),
        ("train:\n  epoch: 3\n", "train.epoch"),
    ],
)
def test_bad_yaml_is_a_config_error_naming_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        build_config(_yaml(tmp_path, text))


def test_yaml_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        build_config(missing)
    broken = _yaml(tmp_path, "optim: [unclosed\n", "broken.yaml")
    with pytest.raises(ConfigError, match=re.escape(str(broken))) as info:
        build_config(broken)
    assert "\n" not in str(info.value)
    scalar = _yaml(tmp_path, "just a string\n", "scalar.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        build_config(scalar)
    assert load_yaml(_yaml(tmp_path, "", "empty.yaml")) == {}


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("optim.lr=0", "optim.lr"),
        ("optim.batch_size=0", "optim.batch_size"),
        ("train.epochs=0", "train.epochs"),
        ("data.size=32", "data.size"),
        ("data.subset=0", "data.subset"),
        ("runtime.device=tpu", "runtime.device"),
        ("augment.crop_scale=[0.9, 0.5]", "crop_scale"),
        ("augment.hflip=1.5", "flip"),
        ("augment.crop_ratio=[0, 1]", "augment.crop_ratio must be [low, high] with 0 < low"),
        ("augment.crop_ratio=[1.2, 0.8]", "augment.crop_ratio"),
        ("augment.stain=1.0", "augment.stain must be in [0,1)"),
        ("augment.stain=-0.1", "augment.stain"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("eval.tta_blur_sigma=0", "eval.tta_blur_sigma must be > 0"),
        ("runtime.threads=-1", "runtime.threads"),
        ("model.arch=vgg11", "model.arch must be one of resnet18, resnet34, resnet50, resnet9"),
        # each of these used to end in a traceback (torch, numpy) or a wrong result mid-run
        ("schedule.plateau_factor=1.5", "schedule.plateau_factor must be in (0,1)"),
        ("schedule.t_max=0", "schedule.t_max must be > 0"),
        ("schedule.div_factor=0", "schedule.div_factor and schedule.final_div_factor"),
        ("optim.momentum=-1", "optim.momentum must be >= 0"),
        ("optim.nesterov=true", ""),  # momentum 0.9: fine
        ("train.label_smoothing=1.5", "train.label_smoothing must be in [0,1)"),
        ("train.seed=-1", "train.seed must be in [0, 2**32)"),
        ("train.seed=1000000000000", "train.seed must be in [0, 2**32)"),
        ("data.std=[0, 0, 0]", "each std > 0"),
        ("train.early_stop_patience=0", "train.early_stop_patience must be >= 1"),
        ("model.class_names=5", "config key 'model.class_names' must be a list, got '5'"),
        ("model.class_names=abcdefgh", "must be a list, got 'abcdefgh'"),
        # negative values were read as off (the zoom: as a half turn) without a word
        ("augment.brightness=-1", "augment.brightness, contrast and saturation must be >= 0"),
        ("augment.saturation=-0.1", "augment.brightness, contrast and saturation must be >= 0"),
        ("augment.translate=-2", "augment.translate must be >= 0"),
        ("eval.tta_scale=-1", "eval.tta_scale must be > 0"),
        ("eval.tta_noise_std=-1", "eval.tta_noise_std must be >= 0"),
    ],
)
def test_cross_field_validation(override: str, words: str) -> None:
    if not words:
        build_config(overrides=[override])
        return
    with pytest.raises(ConfigError, match=re.escape(words)):
        build_config(overrides=[override])


def test_nesterov_without_momentum_is_refused_and_list_items_are_coerced() -> None:
    with pytest.raises(ConfigError, match="optim.nesterov needs optim.momentum > 0"):
        build_config(overrides=["optim.momentum=0", "optim.nesterov=true"])
    names = build_config(overrides=["model.class_names=[1, b, c, d, e, f, g, h]"])
    assert names.model.class_names == ["1", "b", "c", "d", "e", "f", "g", "h"]


def test_path_keys_are_saved_absolute(tmp_path: Path, monkeypatch) -> None:
    """A relative teacher, data.path or weights file from --set is resolved where train runs,
    so --resume from elsewhere finds it (only --data was before)."""
    from bloodmnist.config import absolute_paths

    monkeypatch.chdir(tmp_path)
    sets = ["train.teacher=t1", "data.path=~/d.npz", "model.pretrained=w.pth"]
    cfg = absolute_paths(build_config(overrides=sets))
    assert cfg.train.teacher == str(tmp_path / "t1")
    assert cfg.data.path == str(Path.home() / "d.npz")
    assert cfg.model.pretrained == str(tmp_path / "w.pth")
    kept = absolute_paths(build_config())
    assert kept.model.pretrained == "auto" and kept.train.teacher is None


def test_a_value_then_a_key_below_it_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match="'optim' was set to a value, not a section"):
        build_config(overrides=["optim=1", "optim.lr=2"])


def test_parse_override_reads_values_as_yaml() -> None:
    assert parse_override("optim.lr=1.0e-3") == ("optim.lr", 1e-3)
    assert parse_override(" train.seed =5") == ("train.seed", 5)
    assert parse_override("runtime.name=a=b") == ("runtime.name", "a=b")  # split at first '='
    key, value = parse_override("optim.lr=NaN")
    assert key == "optim.lr" and math.isnan(value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.seed=042", "config key 'train.seed' must be an integer, got '042'"),  # octal: 34
        ("train.epochs=1:30", "config key 'train.epochs' must be an integer, got '1:30'"),  # 90
        ("train.epochs=1_0", "must be an integer, got '1_0'"),
        ("optim.batch_size=0x40", "must be an integer, got '0x40'"),
        ("optim.weight_decay=1_000", "'optim.weight_decay' must be a number, got '1_000'"),
    ],
)
def test_numbers_are_decimal_as_typed(override: str, message: str) -> None:
    """YAML 1.1 (PyYAML) reads 042 as octal 34 and 1:30 as 90: a seed typed 042 trained seed 34.
    Numbers are YAML 1.2's now; anything else stays text, which a number key refuses."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config(overrides=[override])
    cfg = build_config(overrides=["runtime.name=010", "data.path=0777", "train.seed=42"])
    assert (cfg.runtime.name, cfg.data.path, cfg.train.seed) == ("010", "0777", 42)
    # a text key keeps a number as typed (1.50 would be the number 1.5, then the text "1.5")
    cfg = build_config(overrides=["runtime.name=1.50 # a comment", "train.teacher=1.0e-05"])
    assert (cfg.runtime.name, cfg.train.teacher) == ("1.50", "1.0e-05")
    names = build_config(overrides=["model.class_names=[1.50, b, c, d, e, f, g, h]"])
    assert names.model.class_names[:2] == ["1.50", "b"]
    # a number key reads a decimal written as text (YAML 1.1 reads 1e-4, 2e1 as text)
    cfg = build_config(overrides=["optim.lr=1e-4", "train.epochs=2e1"])
    assert (cfg.optim.lr, cfg.train.epochs) == (1e-4, 20)


def test_a_config_file_keeps_text_keys_as_written(tmp_path: Path) -> None:
    """`name: 1.50` in a --config file was the text "1.5" (YAML read a number); now it is what
    the file says, as with --set, while number keys still read numbers."""
    path = tmp_path / "mine.yaml"
    path.write_text(
        "runtime: {name: 1.50, threads: 2}\noptim: {lr: 1.50}\ndata: {path: null, size: 28}\n"
        "train: {teacher: 1.0e-05, seed: 7}\n"
        "model: {class_names: [1.50, 2, c, d, e, f, g, h], width: 0.50}\n"
    )
    cfg = build_config(yaml_path=path)
    assert (cfg.runtime.name, cfg.train.teacher) == ("1.50", "1.0e-05")
    assert cfg.model.class_names[:3] == ["1.50", "2", "c"]
    assert (cfg.optim.lr, cfg.model.width, cfg.runtime.threads, cfg.train.seed) == (1.5, 0.5, 2, 7)
    assert cfg.data.path is None and cfg.data.size == 28


def test_a_key_given_twice_in_a_config_file_is_refused(tmp_path: Path) -> None:
    """A second `optim:` section replaced the first (its lr dropped without a word)."""
    path = _yaml(tmp_path, "optim:\n  lr: 0.5\ntrain:\n  epochs: 3\noptim:\n  batch_size: 32\n")
    with pytest.raises(ConfigError) as info:
        build_config(path)
    assert str(info.value) == (
        f"config file {path} is not valid YAML (line 5, column 1: duplicate key 'optim' "
        "(a key may be given once))"
    )
    twice = _yaml(tmp_path, "optim:\n  lr: 0.5\n  lr: 0.1\n", "twice.yaml")
    with pytest.raises(ConfigError, match="line 3, column 3: duplicate key 'lr'"):
        build_config(twice)
    merged = _yaml(tmp_path, "x: &o {lr: 0.5}\ny:\n  <<: *o\n  lr: 0.1\n", "anchor.yaml")
    assert load_yaml(merged) == {"x": {"lr": 0.5}, "y": {"lr": 0.1}}  # a merged key overridden


def test_exponent_without_dot_is_a_float(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads '1e-4' as text; float fields must still accept it.
    assert build_config(overrides=["optim.lr=1e-4"]).optim.lr == 1e-4
    cfg = build_config(
        _yaml(tmp_path, "optim:\n  weight_decay: 5e-4\nschedule:\n  eta_min: 1E-5\n")
    )
    assert cfg.optim.weight_decay == 5e-4 and cfg.schedule.eta_min == 1e-5
    with pytest.raises(ConfigError, match="optim.lr"):
        build_config(overrides=["optim.lr=fast"])


def test_dict_round_trip() -> None:
    cfg = build_config(
        overrides=["optim.lr=0.05", "augment.crop_scale=[0.7, 0.95]", "data.subset=10"]
    )
    data = cfg.to_dict()
    assert data["augment"]["crop_scale"] == [0.7, 0.95]  # plain lists for YAML/JSON
    assert isinstance(data["data"]["mean"], list)
    back = from_dict(data)
    assert back == cfg
    assert isinstance(back.augment.crop_scale, tuple) and isinstance(back.data.mean, tuple)
    assert from_dict({}) == Config()


def test_save_yaml_round_trip(tmp_path: Path) -> None:
    cfg = build_config(overrides=["train.epochs=3", "model.pretrained=none", "eval.tta=false"])
    path = tmp_path / "config.yaml"
    save_yaml(cfg, path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert list(raw) == [
        "data",
        "augment",
        "model",
        "optim",
        "schedule",
        "train",
        "eval",
        "runtime",
    ]
    assert from_dict(load_yaml(path)) == cfg
    assert build_config(path) == cfg  # a saved config.yaml is a valid --config file


def test_augment_config_is_independent_per_instance() -> None:
    a, b = Config(), Config()
    a.augment.rotation = 0.0
    assert b.augment.rotation == AugmentConfig().rotation == 10.0


def test_reference_yaml_lists_every_default() -> None:
    """configs/reference.yaml documents the defaults: it must stay equal to Config()."""
    path = Path(__file__).resolve().parents[1] / "configs" / "reference.yaml"
    assert yaml.safe_load(path.read_text()) == Config().to_dict()


_HEAVY_PROBE = """
import sys
from bloodmnist.cli.main import main
rc = main(sys.argv[1:])
heavy = {"torchvision", "matplotlib", "scipy", "sklearn", "openpyxl", "captum", "onnxruntime"}
print(rc, sorted({m.split(".")[0] for m in sys.modules} & heavy))
"""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "missing.npz"], "missing.npz; pass --data FILE.npz"),
        (["--set", "model.arch=nope"], "model.arch must be one of"),
        (["--set", "eval.compare_tta=maybe"], "eval.compare_tta"),
    ],
)
def test_train_input_errors_come_before_the_heavy_imports(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """A bad config or a missing data file is one error line before torchvision, matplotlib,
    scikit-learn & co. are loaded (about 7 of the 10 s a run's imports take on a small CPU)."""
    cmd = [sys.executable, "-c", _HEAVY_PROBE, "train", *args]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "2 []", out.stdout + out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], out.stderr


def test_a_fast_recipe_run_never_imports_torchvision(shared_data: Path, tmp_path: Path) -> None:
    """torchvision costs predict/evaluate/serve ~1 s to import (a training process ~0.3 s: its
    optimizer loads torch._dynamo anyway); the ResNet-9 family, its TTA (blur included) and the
    run folder's manifest do without it."""
    args = ["train", "--data", str(shared_data), "--subset", "32", "--epochs", "1", "--quiet"]
    args += ["--out", "run", "--set", "runtime.reports=false", "--set", "runtime.threads=1"]
    probe = _HEAVY_PROBE.replace("heavy = {", "heavy = {'torch', ")
    out = subprocess.run(
        [sys.executable, "-c", probe, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.stdout.strip().splitlines()[-1] == "0 ['scipy', 'sklearn', 'torch']", out.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["arch"] == "resnet9" and "test_acc_tta" in summary
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["torchvision"] == _torchvision_version_by_import()
    # predict and export with that run (a temperature to apply) load neither scikit-learn nor
    # SciPy's optimiser, which only fitting and scoring need (~1 s of their start on a small CPU)
    probe = _HEAVY_PROBE.split("heavy =")[0] + (
        'heavy = {"matplotlib", "scipy.special", "scipy.optimize", "sklearn", "torchvision"}\n'
        "print(rc, sorted(m for m in sys.modules if m in heavy))\n"
    )
    with np.load(shared_data) as data:
        Image.fromarray(data["test_images"][0]).save(tmp_path / "cell.png")
    pred = ["predict", "run", "cell.png", "--out", "p.json"]
    out = subprocess.run(
        [sys.executable, "-c", probe, *pred], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.stdout.strip().splitlines()[-1] == "0 ['scipy.special']", out.stdout + out.stderr
    assert json.loads((tmp_path / "p.json").read_text())["results"][0]["status"] == "ok"
    export = ["export", "run", "--data", str(shared_data), "--parity-images", "16"]
    out = subprocess.run(
        [sys.executable, "-c", probe, *export], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr
    assert (tmp_path / "run" / "model.onnx").is_file()


def _torchvision_version_by_import() -> str:
    import torchvision

    return torchvision.__version__
