"""runtime.compile: the training step through torch.compile, the same numbers, eager checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from bloodmnist.cli.main import main
from bloodmnist.config import build_config
from bloodmnist.errors import ConfigError
from bloodmnist.model import model_from_config
from bloodmnist.runtime import has_cxx_compiler, setup_runtime
from bloodmnist.training.model_setup import compile_for_training

FAST_NET = ["model.arch=resnet9", "model.width=0.25"]
needs_compiler = pytest.mark.skipif(
    not has_cxx_compiler(), reason="torch.compile on a CPU needs a C++ compiler (g++/clang++)"
)


def _graphs() -> int:
    """Graphs torch.compile has built in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def test_off_by_default_and_refused_without_a_compiler(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cfg = build_config(recipe="fast")
    rt = setup_runtime("cpu", "fp32", 1)
    model = model_from_config(cfg)
    assert cfg.runtime.compile is False and compile_for_training(model, cfg, rt) is model
    on = build_config(recipe="fast", overrides=["runtime.compile=true"])
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no g++, clang++ or c++
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ConfigError, match="needs a C\\+\\+ compiler.*runtime.compile=false"):
        compile_for_training(model, on, rt)


@needs_compiler
def test_a_compiled_step_gives_the_eager_loss_and_gradients() -> None:
    """fp32, one training step of the fast network on the same batch: compiled kernels sum in
    another order, so equal within float tolerance, not bit for bit."""
    cfg = build_config(overrides=[*FAST_NET, "runtime.compile=true"])
    rt = setup_runtime("cpu", "fp32", 1)
    torch.manual_seed(0)
    model = model_from_config(cfg).to(memory_format=torch.channels_last).train()
    x = torch.randn(32, 3, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.arange(32) % 8
    results = []
    compiled = compile_for_training(model, cfg, rt)
    assert type(compiled).__name__ == "OptimizedModule" and compiled._orig_mod is model
    graphs = _graphs()
    for net in (model, compiled):
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(x), y, label_smoothing=0.1)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert _graphs() > graphs  # the second pass really ran a compiled graph
    (loss_e, grads_e), (loss_c, grads_c) = results
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-5)
    for g_c, g_e in zip(grads_c, grads_e, strict=True):
        torch.testing.assert_close(g_c, g_e, rtol=1e-3, atol=1e-4)


@needs_compiler
@pytest.mark.slow
def test_a_compiled_run_saves_an_eager_model(shared_data: Path, tmp_path: Path) -> None:
    args = ["train", "--recipe", "fast", "--data", str(shared_data), "--subset", "128"]
    args += ["--out", str(tmp_path), "--epochs", "2", "--quiet", "--seed", "3"]
    for kv in ("runtime.threads=1", "runtime.reports=false", "runtime.precision=fp32"):
        args += ["--set", kv]
    args += ["--set", "eval.tta=false", "--set", "runtime.compile=true"]
    # batch 32, as the step test above: the same kernels, so most come from the on-disk cache
    # that test filled (cold, this run's compile took 30 s on one core of a clean machine; 17 s so)
    args += ["--set", "optim.batch_size=32"]
    graphs = _graphs()
    assert main(args) == 0
    assert _graphs() > graphs  # the training step was compiled, not just the key recorded
    log = (tmp_path / "train.log").read_text()
    assert "runtime.compile: the training step runs through torch.compile" in log
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    assert best["config"]["runtime"]["compile"] is True
    assert not any("_orig_mod" in k for k in best["model"])  # the bare model's names
    assert not any("_orig_mod" in k for k in best["train_model"])
    fresh = model_from_config(build_config(recipe="fast"))
    fresh.load_state_dict(best["model"])  # strict: the same keys as an eager run's
    summary = json.loads((tmp_path / "summary.json").read_text())
    history = (tmp_path / "history.csv").read_text().splitlines()
    assert len(history) == 3 and summary["epochs_run"] == 2
    assert 0.0 <= summary["test_acc"] <= 1.0 and summary["train_pflop"] > 0
