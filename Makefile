# Two entry points for a fresh clone (see README):
#   make run    installs into .venv and runs the main job (ECOS selective labelling) on the embedded data
#   make test   installs into .venv and runs the test suite (what CI runs)
# Optional data (make run / make test need none of it):
#   make data   installs Fashion-MNIST (Debian package dataset-fashion-mnist; sudo unless root)
#               and builds the fashion_mnist and fashion_mnist_c TFDS datasets into the cache
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
WORKDIR ?= runs/selective_labeling
ARGS   ?=

.PHONY: install run quick sweep-example test test-slow bench data clean
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) experiments/selective_labeling.py --workdir=$(WORKDIR) $(ARGS)

quick: install
	$(PY) experiments/selective_labeling.py --config=configs/selective_labeling.py:quick --workdir=runs/quick $(ARGS)

# The README's sweep example: quick selective labelling, epsilon x R (6 points, resumable)
sweep-example: install
	$(PY) -m ecos_jax.sweep experiments/selective_labeling.py --config=configs/selective_labeling.py:quick \
	  --axis ecos.epsilon=0.1,0.58,2 --axis ecos.num_centroids=10,30 --set ecos.noise_seed=0 \
	  --set "methods=('ecos','random')" --workdir=runs/sweep_example \
	  --plot accuracy:ecos.epsilon:ecos.num_centroids --where budget=200 $(ARGS)

test: install
	$(PY) -m pytest -n 2 --dist=worksteal -q $(ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(ARGS)

bench: install
	$(PY) benchmarks/dpsgd.py && $(PY) benchmarks/scores.py && $(PY) benchmarks/sampling.py

data: install
	@if ! $(PY) -c "import sys; from ecos_jax.data import fashion; sys.exit(bool(fashion.missing_files(fashion.source_dir())))"; then \
	  if [ -n "$$ECOS_JAX_FASHION_MNIST_DIR" ]; then echo "ECOS_JAX_FASHION_MNIST_DIR=$$ECOS_JAX_FASHION_MNIST_DIR lacks the Fashion-MNIST IDX files" >&2; exit 1; fi; \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y dataset-fashion-mnist; else sudo apt-get install -y dataset-fashion-mnist; fi; \
	fi
	$(PY) -c "from ecos_jax.data import load; print({n: len(load(n)) for n in ('fashion_mnist', 'fashion_mnist_c')})"

clean:
	rm -rf $(VENV) runs
