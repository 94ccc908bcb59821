# Entry points for a fresh machine (after `pip install torch==2.13.0`; see README.md).
PYTHON ?= python
OUT ?= outputs/demo
NUM_CASES ?= 24
UNLABELLED ?= 8
SEED ?= 0
PROFILE ?= small

.PHONY: install install-test demo data test lint slow-test

install:
	$(PYTHON) -m pip install -e .

install-test:
	$(PYTHON) -m pip install -e ".[test]"

## The main job: phantom data set (labelled + unlabelled), preview PNG, validated datalist with folds.
demo: install data

data:
	$(PYTHON) scripts/make_phantoms.py --output-dir $(OUT)/data --num-cases $(NUM_CASES) \
		--unlabelled $(UNLABELLED) --seed $(SEED) --profile $(PROFILE) --preview
	$(PYTHON) scripts/prepare_datalist.py --dataset-dir $(OUT)/data --output $(OUT)/datalist.json --seed $(SEED)

## The default test suite (slow tests excluded) and the linter.
test: install-test lint
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

slow-test: install-test
	$(PYTHON) -m pytest -q -m slow
