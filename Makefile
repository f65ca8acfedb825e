# The two commands a new user types (see README): `make demo` and `make test`.
# Each creates its own virtual environment in .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo demo-replay test test-slow lint bench clean

$(BIN)/alphabus: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "alphabus needs Python 3.11+"'
	@echo "Setting up $(VENV): installing alphabus and its dependencies (quiet; about 15 s, longer on a first download)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@echo "Installed. Next time this step is skipped."
	touch $@

demo: $(BIN)/alphabus
	$(BIN)/alphabus demo

demo-replay: $(BIN)/alphabus
	$(BIN)/alphabus demo --replay ../shared/data/binance_usdm_1h

lint: $(BIN)/alphabus
	$(BIN)/ruff check .

# The suite without the tests marked slow (under 15 minutes on 2 cores); CI runs both targets.
test: lint
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: $(BIN)/alphabus
	$(BIN)/python -m pytest -q -m slow

bench: $(BIN)/alphabus
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
