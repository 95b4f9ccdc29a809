# make demo   creates .venv, installs requirements, makes a synthetic demo dataset, trains on it
# make test   creates .venv if needed, runs the whole test suite (what CI runs)
# make test-fast   the same without the end-to-end tests marked slow
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test test-fast clean-demo

venv: $(VENV)/.installed

# The pinned set, then this package itself (editable: the scripts and tests import the tree).
$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

data/demo/train: | venv
	$(PY) -m skin_keras.data.synthetic data/demo

demo: venv data/demo/train
	$(PY) train.py --flagfile=configs/demo.cfg

# Two worker processes (pytest-xdist), each test file on one of them: the suite's TensorFlow
# work keeps about one core busy, so two halve the wall time on a 2-core machine.
test: venv
	$(PY) -m pytest -q -n 2 --dist loadfile tests

test-fast: venv
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" tests

clean-demo:
	rm -rf data/demo
