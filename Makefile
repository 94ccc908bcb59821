# Entry points for a fresh machine (after `pip install torch==2.13.0`; see README.md).
PYTHON ?= python
OUT ?= outputs/demo
NUM_CASES ?= 24
UNLABELLED ?= 8
SEED ?= 0
PROFILE ?= small

TEACHER := bundles/hybrid_teacher
TEACHER_CFG := $(TEACHER)/configs
TEACHER_OUT := $(OUT)/hybrid_teacher
BUNDLE_ARGS = --dataset_dir $(OUT)/data --data_list_file_path $(OUT)/datalist.json

.PHONY: install install-test demo data teacher test lint slow-test

install:
	$(PYTHON) -m pip install -e .

install-test:
	$(PYTHON) -m pip install -e ".[test]"

## The main job: phantom data set (labelled + unlabelled), preview PNG, validated datalist with folds,
## then the demo teacher: training, inference on the unlabelled cases, evaluation on the validation fold.
demo: install data teacher

data:
	$(PYTHON) scripts/make_phantoms.py --output-dir $(OUT)/data --num-cases $(NUM_CASES) \
		--unlabelled $(UNLABELLED) --seed $(SEED) --profile $(PROFILE) --preview
	$(PYTHON) scripts/prepare_datalist.py --dataset-dir $(OUT)/data --output $(OUT)/datalist.json --seed $(SEED)

teacher:
	$(PYTHON) -m monai.bundle run training --config_file "['$(TEACHER_CFG)/train.json','$(TEACHER_CFG)/demo.json']" \
		--bundle_root $(TEACHER) $(BUNDLE_ARGS) --ckpt_dir $(TEACHER_OUT)/models --output_dir $(TEACHER_OUT)/runs
	$(PYTHON) -m monai.bundle run --config_file "['$(TEACHER_CFG)/inference.json','$(TEACHER_CFG)/demo.json']" \
		--bundle_root $(TEACHER) $(BUNDLE_ARGS) --ckpt_dir $(TEACHER_OUT)/models --output_dir $(TEACHER_OUT)/predictions
	$(PYTHON) -m monai.bundle run \
		--config_file "['$(TEACHER_CFG)/train.json','$(TEACHER_CFG)/demo.json','$(TEACHER_CFG)/evaluate.json']" \
		--bundle_root $(TEACHER) $(BUNDLE_ARGS) --ckpt_dir $(TEACHER_OUT)/models --output_dir $(TEACHER_OUT)/evaluation
	@echo "teacher: $(TEACHER_OUT)/models/model.pt, predictions in $(TEACHER_OUT)/predictions, metrics in $(TEACHER_OUT)/evaluation/metrics.csv"

## The default test suite (slow tests excluded) and the linter.
test: install-test lint
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

slow-test: install-test
	$(PYTHON) -m pytest -q -m slow
