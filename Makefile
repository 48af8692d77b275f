# Two entry points on a fresh machine:
#   make demo   - create .venv (torch first), run the Cu/EMT campaign, evaluate it
#   make test   - create .venv (torch first), run the whole test suite
# torch is installed first and pinned: any spec that 2.13.0 does not satisfy pulls the CUDA build.

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.almat-installed
TORCH  := torch==2.13.0

.PHONY: install demo test test-fast clean-demo

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[test,sevennet,deepmd]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/almat run workflows/cu_emt.yaml --resume
	$(PY) scripts/evaluate_campaign.py cu-emt --frames 20

test: $(STAMP)
	$(PY) -m pytest tests -q

test-fast: $(STAMP)
	$(PY) -m pytest tests -q -m "not slow"

clean-demo:
	rm -rf almat_db almat_runs
