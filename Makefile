# Two commands do all set-up:  `make demo` (the main job) and `make test` (the test suite).
# The virtual environment is .venv at the repository root, or $NECKLACE_VENV when set.
PYTHON ?= python3
VENV ?= $(if $(NECKLACE_VENV),$(NECKLACE_VENV),.venv)
DEPS_KEY := $(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.necklace-deps-$(DEPS_KEY)
BIN := $(VENV)/bin

.PHONY: install demo test lint typecheck unit clean

# the stamp name carries the hash of the dependency files, so it is rebuilt exactly when they change
$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=64" wheel
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all]"
	$(BIN)/python -m pip install --quiet -c constraints.txt --no-deps mmdet mmyolo
	@rm -f $(VENV)/.necklace-deps-*
	@touch $(STAMP)

# (re)point the environment at this checkout; cheap, so a cached venv serves any clone
install: $(STAMP)
	@$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .

# the main job: train, evaluate and profile fpn / pafpn / bifpn on the built-in data (~10 min on 2 CPU cores)
demo: install
	$(BIN)/necklace compare --output runs/compare

lint: install
	$(BIN)/ruff check src tests $(wildcard benchmarks)
	$(BIN)/ruff format --check src tests conftest.py $(wildcard benchmarks)

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/python -m pytest -q

test: lint typecheck unit

clean:
	rm -rf .venv build src/*.egg-info
