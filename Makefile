# One-command set-up: `make demo` and `make test` create the venv, install the
# system packages (apt) and Python packages they need, then run.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
APT_PACKAGES := libportaudio2 ffmpeg espeak-ng sox chromium chromium-driver
export HF_HUB_OFFLINE := 1

.PHONY: demo test lint format setup system-deps bench clean

demo: setup
	$(BIN)/sentistream run --source demo

test: setup
	$(BIN)/python -m pytest

# ruff (lint + format check) and pyright (basic), configured in pyproject.toml: see CONTRIBUTING.md.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pyright --pythonpath $(BIN)/python

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

setup: system-deps $(STAMP)

# Debian packages: PortAudio (microphones), ffmpeg, espeak-ng and sox (test speech),
# chromium and chromium-driver (the dashboard's headless-browser test).
system-deps:
	@missing=""; \
	command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	command -v espeak-ng >/dev/null || missing="$$missing espeak-ng"; \
	command -v sox >/dev/null || missing="$$missing sox"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	ldconfig -p | grep -q libportaudio.so.2 || missing="$$missing libportaudio2"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(APT_PACKAGES); \
	fi

# torch==2.13.0 first: pip takes the CPU build from this machine's disk; letting pip
# resolve plain `torch` would download a CUDA build of several GB.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (Python 3.11 is required)"; exit 1; }
	[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test,lint,opensmile,ray]'  # opensmile, ray: so their optional paths are tested
	$(BIN)/python -m pip check
	touch $(STAMP)

bench: setup
	$(BIN)/sentistream bench perception

clean:
	rm -rf $(VENV) build *.egg-info
