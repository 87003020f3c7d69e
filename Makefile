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

.PHONY: install demo test test-fast test-deps deploy-env lint format clean

install: $(STAMP)

# torch is installed first and pinned, so nothing later pulls another build.
$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: install
	$(BIN)/lungseg dicomize --data "$(LUNGSEG_DATA)" --count 14 --pixel-spacing 0.35 -o $(DEMO_OUT)/dicom
	$(BIN)/lungseg segment $(DEMO_OUT)/dicom -o $(DEMO_OUT)/segmented --no-progress --overwrite

test: install
	$(BIN)/python -m pytest

# The MONAI Deploy application's environment (tests/deploy): its own venv, because the SDK's
# monai.deploy package makes every `import monai` ~2 s slower wherever it is installed.
DEPLOY_VENV := .venv-deploy
deploy-env: $(DEPLOY_VENV)/.lungseg-installed

$(DEPLOY_VENV)/.lungseg-installed: setup.cfg pyproject.toml
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install -q --upgrade pip
	$(DEPLOY_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(DEPLOY_VENV)/bin/python -m pip install -q -e ".[deploy]"
	touch $@

# Debian tools the tests run against: dciodvfy (dicom3tools), storescp/storescu/echoscu (dcmtk),
# chromium (the viewer's browser test, driven by Playwright; no browser is downloaded),
# Orthanc with its DICOMweb plugin (the PACS of the node tests, started by the tests).
# CI runs this before `make test`.
SYSTEM_DEPS := dicom3tools dcmtk chromium orthanc orthanc-dicomweb
test-deps: deploy-env
	{ command -v dciodvfy && command -v storescp && command -v chromium && command -v Orthanc \
		&& test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so; } >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get install -y -q $(SYSTEM_DEPS) || \
			{ apt-get update -q && apt-get install -y -q $(SYSTEM_DEPS); }; \
		else sudo -n apt-get install -y -q $(SYSTEM_DEPS); fi; }

test-fast: install
	$(BIN)/python -m pytest -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) outputs .pytest_cache .ruff_cache
