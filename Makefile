# make demo   creates .venv, installs requirements, makes a synthetic demo dataset, trains on it
# make test   creates .venv if needed, runs the whole test suite (what CI runs)
# make test-fast   the same without the end-to-end tests marked slow (about a minute)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test test-fast clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

data/demo/train: | venv
	$(PY) -m skin_keras.synthetic data/demo

demo: venv data/demo/train
	$(PY) train.py --flagfile=configs/demo.cfg

# Two worker processes (pytest-xdist), each test file on one of them: the suite's TensorFlow
# work keeps about one core busy, so two halve the wall time on a 2-core machine. Files go out
# in the order tests/conftest.py gives them (the longest first), not xdist's (most tests first,
# which left the long files with few tests for the end).
XDIST = -n 2 --dist loadfile --no-loadscope-reorder
test: venv
	$(PY) -m pytest -q $(XDIST) tests

test-fast: venv
	$(PY) -m pytest -q $(XDIST) -m "not slow" tests

clean-demo:
	rm -rf data/demo
