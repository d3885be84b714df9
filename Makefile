# Two commands on a fresh machine with Python 3.11: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# What this machine can run: the CPU engines and their extras (no CUDA, no TensorRT here).
EXTRAS ?= cpu,intel,tflite,compress,test
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install browser demo test lint bench readme-figures clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CUDA build also runs on the CPU; nothing later may replace it.
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

# The demo model before and after compression; the check fails when no change column moved from ×1.00.
demo: install
	$(BIN)/coordinator run examples/sweep.yaml
	$(BIN)/python scripts/demo_check.py

# The HTML report is tested in Debian's headless chromium.
browser:
	scripts/ensure-chromium.sh

test: install browser
	$(BIN)/python -m pytest -q

# ruff (style, imports, bugs, complexity bound), mypy, and no block of 6+ repeated lines in the packages.
lint: install
	$(BIN)/ruff check agent shared coordinator fleetbench_api tests bench scripts
	$(BIN)/python scripts/typecheck.py   # as installed: fleetbench.agent, ... (types cross packages)
	$(BIN)/python -m pylint --disable=all --enable=duplicate-code --min-similarity-lines=6 --score=n agent shared coordinator bench

bench: install
	$(BIN)/python bench/fidelity.py
	$(BIN)/python bench/report.py

# Rerun the sweeps behind the README's tables and rewrite them, labelled with this machine and the command.
readme-figures: install
	$(BIN)/python scripts/readme_figures.py

clean:
	rm -rf $(VENV) results.duckdb
