# bitlens: set-up, tests and demos. Everything installs into .venv from package registries only.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install test synth clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 resolves to the local CPU wheel here; installing it first stops pip from pulling a CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

synth: $(STAMP)
	$(VENV)/bin/bitlens synth --bits 2,4,6,8,10,12 --dim 64 --seed 0 --out runs/synth

clean:
	rm -rf $(VENV) runs .pytest_cache
