# Two entry points for a fresh clone (see README):
#   make run    installs into .venv and runs the main job (ECOS selective labelling) on the embedded data
#   make test   installs into .venv and runs the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
WORKDIR ?= runs/selective_labeling
ARGS   ?=

.PHONY: install run quick test test-slow bench clean
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

test: install
	$(PY) -m pytest -n 2 -q $(ARGS)

test-slow: install
	$(PY) -m pytest -q -m slow $(ARGS)

bench: install
	$(PY) benchmarks/dpsgd.py && $(PY) benchmarks/scores.py && $(PY) benchmarks/sampling.py

clean:
	rm -rf $(VENV) runs
