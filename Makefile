# featurecache: `make demo` and `make test` are the two commands of the quick start.
# Both create .venv themselves and install the exact releases of constraints.txt, so
# results reproduce; pyproject.toml itself declares lower bounds only, so users can upgrade.
# torch/torchvision are pinned to the releases that install offline on our machines; do not
# pin anything newer. TORCH_PINS repeats the pins of constraints.txt: keep the two equal
# (pip stops with a conflict when they differ).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints.txt
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS) Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(CONSTRAINTS) $(TORCH_PINS)
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e ".[test,ray,dask,timm,clip,hf,parquet,s3]" $(TORCH_PINS)
	touch $(STAMP)

demo: install
	$(VENV)/bin/featurecache demo

test: install
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium) \
		>/dev/null 2>&1 || echo "no chromium (needs apt-get as root): the report's browser test is skipped"
	$(VENV)/bin/ruff check featurecache pipelines tests benchmarks
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check featurecache pipelines tests benchmarks
	$(VENV)/bin/ruff format --check featurecache pipelines tests benchmarks

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
