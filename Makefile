# Two commands: `make demo` and `make test`. Both set everything up on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench
export HF_HUB_OFFLINE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup tools demo test lint typecheck unit integration e2e faults bench bench-compare bench-all clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, from the CPU build on disk, so nothing later pulls a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/llm-monitor demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

tools:
	./.ci/ensure-tools

test: lint tools
	$(BIN)/pytest

unit: setup
	$(BIN)/pytest tests/unit

integration: setup tools
	$(BIN)/pytest tests/integration

e2e: setup
	$(BIN)/pytest tests/e2e

# The fault suite at full size, by hand (docs/reliability.md): ~25 min, then the 30-minute
# soak, which needs ~12 GB free for the in-memory broker (`LLM_MONITOR_SOAK_S=600 make faults`
# for 10 minutes; FAULTS_ARGS="-k 'not soak'" leaves it out). `make test` runs the short
# version. Figures: data/faults-long.jsonl, one JSON line per case.
faults: setup tools
	mkdir -p data
	LLM_MONITOR_FAULTS=long LLM_MONITOR_FAULTS_OUT=data/faults-long.jsonl \
		$(BIN)/pytest tests/faults -m faults -rA $(FAULTS_ARGS)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[dev,bench]"
	touch $(BENCH_STAMP)

# Runs the default benchmarks and writes bench/results/*.json; `make bench-compare` runs them
# again and flags any guarded figure that moved by more than 20 % against the committed result.
bench: $(BENCH_STAMP) tools
	$(BIN)/python -m bench run

bench-compare: $(BENCH_STAMP) tools
	$(BIN)/python -m bench compare

# Every benchmark, the slow ones too (~15 min).
bench-all: $(BENCH_STAMP) tools
	$(BIN)/python -m bench run pipeline pii semantic spans onnx_cpu
	$(BIN)/python -m bench.embedding --n 1000 --repeats 2
	$(BIN)/python -m bench.drift
	$(BIN)/llm-monitor bench reaction --json

clean:
	rm -rf $(VENV) data .mypy_cache .ruff_cache .pytest_cache
