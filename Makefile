# Two commands for a newcomer: `make run` and `make test`. Everything else is set up on demand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE := samples/sample.mp4
SUPPORT := samples/sample.jpg

.PHONY: setup test run app lint clean

setup: $(STAMP)

# torch/torchvision first, pinned to the releases on this machine's disk; then the project in editable mode.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

test: setup lint
	$(BIN)/python -m pytest -q

run: setup
	$(BIN)/cape-track $(SAMPLE) --support $(SUPPORT) --out cape_out

app: setup
	$(BIN)/streamlit run streamlit_app/app.py

clean:
	rm -rf $(VENV) cape_out .pytest_cache .ruff_cache
