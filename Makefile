# Two commands for a newcomer: `make run` and `make test`. Everything else is set up on demand.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SAMPLE := samples/sample.mp4
SUPPORT := samples/sample.jpg

.PHONY: setup test run app lint browser clean

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

test: setup lint browser
	$(BIN)/python -m pytest -q

run: setup
	$(BIN)/cape-track $(SAMPLE) --support $(SUPPORT) --out cape_out --overwrite

app: setup
	$(BIN)/cape-track app

# The page's browser test drives Debian's Chromium (Playwright cannot download its own browser here). Install it
# when it is missing and apt-get is usable (as root, or with password-less sudo); never fail: the test then skips.
browser:
	@test -x /usr/bin/chromium || { \
	  command -v apt-get >/dev/null 2>&1 && \
	  if [ "$$(id -u)" -eq 0 ]; then SUDO=; else SUDO="sudo -n"; fi && \
	  echo "installing chromium for the browser test (apt-get)" && \
	  $$SUDO apt-get update -qq >/dev/null 2>&1 && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; \
	} || echo "note: no /usr/bin/chromium and apt-get could not install it; the browser test will be skipped"

clean:
	rm -rf $(VENV) cape_out .pytest_cache .ruff_cache
