PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint typecheck unit bench clean

$(BIN)/retention: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(BIN)/retention

install: $(BIN)/retention

demo: install
	$(BIN)/retention demo

lint: install
	$(BIN)/ruff check connector adapters rules tests bench

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -n 2 -q

test: lint typecheck unit

bench: install
	$(BIN)/pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/sync_bitrix24.py
	$(BIN)/python bench/rules.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
