# One-command set-up: each target builds the virtual environment it needs (pinned torch/torchvision that
# run on these CPU machines, the package and its test/doc tools), then runs.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# Real datasets are read from ../shared/data (nothing is downloaded there); override to use another cache.
export STHIST_DATA_DIR ?= $(abspath $(CURDIR)/../shared/data)
export HF_HUB_OFFLINE := 1
# sthist raises glibc's allocator thresholds itself around encoding and retrieval (settings.retain_freed_memory)
# and hands the memory back afterwards. The test suite keeps them raised for the whole process instead: its
# many short encodes would each start on fresh pages, and its measured run times are with them.
TEST_ALLOCATOR := MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296

.PHONY: setup demo test test-all docs tutorial lint benchmark benchmark-accuracy clean

$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch 2.14.1 + torchvision 0.29.1 are a pair that import and run together on CPU-only machines (timm needs
	# torchvision; an older torch paired with the only matching torchvision, a CUDA build, fails to import).
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup  ## the main job, on the built-in real dataset (HER2ST)
	$(PY) -m sthist demo --output output/demo

test: setup  ## the default test suite (includes real-data tests and the docs build)
	$(TEST_ALLOCATOR) $(PY) -m pytest -m "not slow"
	$(MAKE) docs

test-all: setup
	$(TEST_ALLOCATOR) $(PY) -m pytest

docs: setup
	$(VENV)/bin/sphinx-build -W --keep-going -q -b html docs docs/_build/html

tutorial: setup  ## re-run the tutorial notebook on HER2ST and store it with its outputs (about 5 minutes)
	$(PY) docs/tutorials/execute.py docs/tutorials/her2st.ipynb

lint: setup  ## ruff (lint + format, the pre-commit hooks) and mypy on src/
	$(VENV)/bin/ruff check src tests benchmarks docs/tutorials
	$(VENV)/bin/ruff format --check src tests benchmarks docs/tutorials
	$(VENV)/bin/mypy src/sthist

benchmark: setup  ## patch extraction, speed and whole-slide memory (about 15 minutes)
	$(PY) benchmarks/patches.py
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/tiles.py

benchmark-accuracy: setup  ## HER2ST cross-validation of all methods over 3 seeds (about 50 minutes)
	$(PY) benchmarks/accuracy.py

clean:
	rm -rf $(VENV) docs/_build docs/generated output
