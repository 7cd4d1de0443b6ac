# Two entry points for a new user: `make demo` (set up, then run the main job on the bundled photos)
# and `make test` (set up, then lint and run the whole test suite). Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out/demo

.PHONY: setup demo test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py scripts/install_detectron2.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/python scripts/install_detectron2.py
	touch $@

demo: setup
	$(BIN)/python -m jobs.demo --output $(OUT)

test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m 'not slow'

clean:
	rm -rf $(VENV) out build dist *.egg-info
