# The two commands of the README's quick start. torch 2.13.0 goes first: with torch absent, pip would pull a
# newer CUDA build of several GB.
PYTHON ?= python3
PIP = $(PYTHON) -m pip install --disable-pip-version-check
OUT ?= edgevit-out

.PHONY: install demo test test-all sweep

install:
	$(PIP) -q torch==2.13.0
	$(PIP) -q -e ".[all]"

demo: install
	edgevit convert tnt_ti --target all --out $(OUT) --force

test: install
	$(PIP) -q -e ".[all,test]"
	$(PYTHON) -m pytest -q

# Everything, the full-size variants included (slow: about an hour on 2 cores).
test-all: install
	$(PIP) -q -e ".[all,test]"
	$(PYTHON) -m pytest -q --runslow

# Export-clean sweep of every variant; results committed under benchmarks/.
sweep: install
	$(PYTHON) benchmarks/export_sweep.py --out benchmarks/results
