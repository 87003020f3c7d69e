# lungseg — the two Quickstart commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lungseg-installed
TORCH  := torch==2.13.0
# The shared Montgomery + Shenzhen data; override with `make demo LUNGSEG_DATA=/path`.
LUNGSEG_DATA ?= $(abspath ../shared/data/montgomery-shenzhen)
DEMO_OUT ?= outputs/demo
export LUNGSEG_DATA

.PHONY: install demo test test-fast lint format clean

install: $(STAMP)

# torch is installed first and pinned, so nothing later pulls another build.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(BIN)/lungseg dicomize --data "$(LUNGSEG_DATA)" --count 14 -o $(DEMO_OUT)/dicom
	$(BIN)/lungseg preview $(DEMO_OUT)/dicom -o $(DEMO_OUT)/previews
	cd bundles/lung_cxr_segmentation && ../../$(BIN)/python -m monai.bundle run \
		--config_file configs/inference.json \
		--dataset_dir "$(abspath $(DEMO_OUT))/dicom" --output_dir "$(abspath $(DEMO_OUT))/masks"

test: install
	$(BIN)/python -m pytest

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
