# Two commands do all set-up on a fresh machine (they create .venv on first use):
#   make demo   - simulate a small screen with planted effects and run the whole pipeline
#   make test   - run the test suite (what CI runs)
#
# Installs are reproducible: every package is installed at the version in constraints.txt (the versions the
# suite runs against; pyproject.toml's ranges start at them). 'make lock' rewrites it from the current .venv.
# torch 2.14.1 + torchvision 0.29.1 (needed by Cellpose 4) install from local disk on this project's machines;
# elsewhere pip downloads them. Override with e.g.  make test TORCH_SPEC="torch==2.15.0 torchvision==0.30.0"
# CONSTRAINTS=  (a different torch needs its own lock).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
CONSTRAINTS ?= constraints.txt
EXTRAS ?= dev,ray
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml setup.py Makefile constraints.txt | cksum | cut -d' ' -f1)
PIP_C := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
PYTEST_ARGS ?=
DEMO_OUT ?= demo_out

.PHONY: install test test-all test-slow demo lint bench clean lock

install: $(STAMP)

$(STAMP): pyproject.toml setup.py Makefile constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check $(PIP_C) $(TORCH_SPEC)
	$(PY) -m pip install --quiet --disable-pip-version-check $(PIP_C) -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

# rewrite constraints.txt from the installed .venv (after changing a dependency: install, test, lock, commit)
lock:
	{ sed -n '1,3p' constraints.txt; $(PY) -m pip freeze --exclude-editable --disable-pip-version-check; } \
		> constraints.txt.new && mv constraints.txt.new constraints.txt

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
