# Two commands do all set-up on a fresh machine (they create .venv on first use):
#   make demo   - simulate a small screen with planted effects and run the whole pipeline
#   make test   - run the test suite (what CI runs)
#
# PyTorch is pinned here only (never in pyproject.toml): on this project's machines torch 2.14.1 +
# torchvision 0.29.1 (needed by Cellpose 4) install from local disk; elsewhere pip downloads them.
# Override with e.g.  make test TORCH_SPEC="torch==2.5.1 torchvision==0.20.1"

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
EXTRAS ?= dev,ray
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)
PYTEST_ARGS ?=
DEMO_OUT ?= demo_out

.PHONY: install test test-all test-slow demo lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

# default suite: offline, CPU, no slow/gpu/network tests (target: < 10 min on 2 cores)
test: $(STAMP)
	$(PY) -m pytest -m "not slow and not gpu and not network" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -m "slow and not gpu and not network" $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/subcell-screen demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(PY) -m ruff check subcell_screen tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
