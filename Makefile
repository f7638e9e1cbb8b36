# Two front doors: `make train` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned to the tested release; pip takes it from a local wheel cache where one exists.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
DATA   ?=
OUT    ?=
ARGS   ?=

.PHONY: train test lint install clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install $(TORCH)
	$(BIN)/pip install -e '.[dev,track]'
	touch $@

install: $(VENV)/.installed

train: install
	$(BIN)/bloodmnist train $(if $(DATA),--data $(DATA)) $(if $(OUT),--out $(OUT)) $(ARGS)

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

clean-venv:
	rm -rf $(VENV)
