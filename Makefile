# make demo   creates .venv, installs requirements, makes a synthetic demo dataset, trains on it
# make test   creates .venv if needed, runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv demo test clean-demo

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

data/demo/train: | venv
	$(PY) -m skin_keras.synthetic data/demo

demo: venv data/demo/train
	$(PY) train.py --flagfile=configs/demo.cfg

test: venv
	$(PY) -m pytest -q tests

clean-demo:
	rm -rf data/demo
