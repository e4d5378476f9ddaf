# On a fresh machine: `make setup`, then `make test`. `make serve` runs the offline server.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared
# pip prints one line per unused local package index on some machines; hide only those lines.
QUIET_INDEX := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: setup test serve voices bench

setup:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.lock -e . 2>&1 | $(QUIET_INDEX)
# The playground's browser tests drive Debian's chromium (Playwright's own browser download needs the internet).
	if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	elif ! command -v chromium >/dev/null; then echo "no chromium: the browser tests will skip (run as root to install it)"; fi
	$(PY) -c "import torch, torchaudio, transformers, bentoml; print('ready: torch', torch.__version__, '| transformers', transformers.__version__, '| bentoml', bentoml.__version__)"

test:
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q tests

serve:
	HF_HUB_OFFLINE=1 HIGGS_VOICE_SOURCE=$(SHARED)/voice_prompts $(PY) main.py --host 127.0.0.1 --port 8000 \
		--model-path tiny-random --audio-tokenizer-path tiny-random --device cpu

voices:
	$(PY) -m higgs_runtime.voices fetch --source $(SHARED)/voice_prompts

bench:
	HF_HUB_OFFLINE=1 $(PY) bench/engine_bench.py
