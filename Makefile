# enclave-kms: every set-up step lives here, so a fresh clone needs only `make run` / `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP    := $(BIN)/python -m pip
# make run PORT=9443 DATA=/srv/kms
PORT   ?= 8443
DATA   ?= data

.PHONY: run test lint typecheck unit bench bench-quick soak demo fuzz clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Reinstall only when the dependency declarations change.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(PIP) install --quiet -c constraints.txt -e '.[dev,server,postgres]'
	# Bytecode now, as a wheel install has it: with PYTHONDONTWRITEBYTECODE set (this
	# machine's default) an editable install would recompile every module in every process.
	$(BIN)/python -m compileall -q src > /dev/null
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/enclave-kms serve --platform sim --data-dir $(DATA) --listen 127.0.0.1:$(PORT)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	bash scripts/ensure-postgres.sh
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e '.[dev,server,postgres,bench]'
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e '.[dev,server,postgres,bench]'
	$(BIN)/python -m bench --quick

# Steady load at SOAK_LOAD (0.8) of measured capacity for SOAK_SECONDS: 0 errors, RSS growth
# < 5 %, p99 stable (bench/soak.py). Not part of `make test`.
SOAK_SECONDS ?= 600
soak: $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e '.[dev,server,postgres,bench]'
	SOAK_SECONDS=$(SOAK_SECONDS) $(BIN)/python -m bench.soak

# Coverage-guided fuzzing (atheris) of every parser and the EDL decoder, bounded by time:
# FUZZ_SECONDS per target (default 60). Not part of `make test` (a short run is, via pytest).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := quote evidence ratls collateral tcb_info qe_identity edl dice
fuzz: $(STAMP)
	$(PIP) install --quiet -c constraints.txt -e '.[dev,postgres,fuzz]'
	set -e; for t in $(FUZZ_TARGETS); do $(BIN)/python -m tests.fuzz $$t $(FUZZ_SECONDS); done

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
