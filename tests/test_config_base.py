"""What `--config FILE` builds on without `--recipe`: the default recipe under a partial file, the
Config defaults under a complete saved config (a run's config.yaml, `tune`'s best.yaml), so keys
added after such a file was written keep the behaviour it ran with."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bloodmnist.cli.commands import train_config
from bloodmnist.cli.main import build_parser
from bloodmnist.cli.tune_commands import _base_spec
from bloodmnist.config import (
    DEFAULT_RECIPE,
    base_recipe,
    build_config,
    from_dict,
    lacking_keys,
    save_yaml,
)
from conftest import describe, run_cli

#: Keys added after the first recipes, whose defaults keep the reference's behaviour.
NEWER = (
    ("optim", "kind"),
    ("optim", "muon_lr"),
    ("train", "select"),
    ("eval", "temperature_scaling"),
)


def _old_run_config(path: Path, data: Path | None = None) -> Path:
    """A complete config.yaml as an older version wrote it: every section, none of NEWER."""
    cfg = build_config(overrides=["model.arch=resnet9", "model.width=0.125", "train.epochs=1"])
    cfg.runtime.reports = False
    cfg.runtime.tensorboard = False
    cfg.runtime.precision = "fp32"
    cfg.runtime.threads = 1
    cfg.data.subset = 64
    cfg.data.path = str(data) if data else None
    save_yaml(cfg, path)
    saved = yaml.safe_load(path.read_text())
    for section, key in NEWER:
        del saved[section][key]
    path.write_text(yaml.safe_dump(saved, sort_keys=False))
    return path


def _train_cfg(*args: str):
    return train_config(build_parser().parse_args(["train", *args]))


def test_a_complete_saved_config_keeps_the_config_defaults_for_keys_it_lacks(tmp_path: Path):
    old = _old_run_config(tmp_path / "config.yaml")
    fast = build_config(recipe="fast")
    assert (fast.optim.kind, fast.train.select, fast.eval.temperature_scaling) == (
        "muon",
        "last",
        True,
    )  # what the default recipe would have put under the file
    cfg = _train_cfg("--config", str(old))
    assert (cfg.optim.kind, cfg.train.select, cfg.eval.temperature_scaling) == (
        "sgd",
        "best",
        False,
    )
    assert cfg.to_dict() == from_dict(yaml.safe_load(old.read_text())).to_dict()
    assert _base_spec(["--config", str(old)]).build().to_dict() == cfg.to_dict()  # tune: the same
    # --recipe named: the file goes over that recipe, as asked
    assert _train_cfg("--config", str(old), "--recipe", "fast").optim.kind == "muon"


def test_a_partial_config_goes_over_the_default_recipe(tmp_path: Path) -> None:
    sparse = tmp_path / "mine.yaml"  # every section named, few keys: a user's own file
    names = yaml.safe_load(_old_run_config(tmp_path / "full.yaml").read_text())
    sparse.write_text(yaml.safe_dump({k: {} for k in names} | {"model": {"width": 0.5}}))
    assert base_recipe(None, sparse) == DEFAULT_RECIPE == "fast"
    cfg = _train_cfg("--config", str(sparse))
    assert (cfg.model.arch, cfg.model.width, cfg.optim.kind) == ("resnet9", 0.5, "muon")
    assert base_recipe(None, None) == "fast" and base_recipe("best", sparse) == "best"
    assert base_recipe(None, tmp_path / "missing.yaml") == "fast"  # train then names the file
    # a saved config without a whole section (one added later, say) is still a saved config
    short = tmp_path / "short.yaml"
    short.write_text(yaml.safe_dump({k: v for k, v in names.items() if k != "runtime"}))
    assert base_recipe(None, short) == "reference"
    assert set(lacking_keys(yaml.safe_load(short.read_text()))) >= {"runtime.threads"}


@pytest.mark.slow
def test_training_again_from_an_older_runs_config_yaml(shared_data: Path, tmp_path: Path) -> None:
    old = _old_run_config(tmp_path / "config.yaml", shared_data)
    run = tmp_path / "again"
    result = run_cli(["train", "--config", str(old), "--out", str(run)], cwd=tmp_path)
    assert result.returncode == 0, describe(result)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["optim"]["kind"] == "sgd" and saved["train"]["select"] == "best"
    assert saved == from_dict(yaml.safe_load(old.read_text())).to_dict()
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    lacking = ", ".join(f"{s}.{k}" for s, k in NEWER)
    assert notes == [
        f"note: {old} is a saved config; the keys it lacks take the Config defaults, as when it "
        f"was written ({lacking}); add --recipe fast to take that recipe's instead"
    ]
