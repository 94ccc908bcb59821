# Entry points for a fresh machine (Python 3.10+): every target installs what it needs, torch first (requirements-torch.txt).
PYTHON ?= python
OUT ?= outputs/demo
NUM_CASES ?= 40
UNLABELLED ?= 8
SEED ?= 0
PROFILE ?= small

.PHONY: install install-test demo data benchmark benchmark-branches benchmark-students test lint slow-test deploy-test

install:
	$(PYTHON) -m pip install --quiet -r requirements-torch.txt
	$(PYTHON) -m pip install -e .

install-test:
	$(PYTHON) -m pip install --quiet -r requirements-torch.txt
	$(PYTHON) -m pip install -e ".[test]"

## The main job: phantoms (labelled + unlabelled), datalist, demo teacher, distilled student, inference,
## evaluation and report (OUT/report.md). A second run reuses what is done; an interrupted one continues.
demo: install
	$(PYTHON) scripts/run_demo.py --output-dir $(OUT) --num-cases $(NUM_CASES) --unlabelled $(UNLABELLED) --seed $(SEED)

## Only the phantom data set and its datalist.
data: install
	$(PYTHON) -m kd_components.cli phantoms --output-dir $(OUT)/data --num-cases $(NUM_CASES) \
		--unlabelled $(UNLABELLED) --seed $(SEED) --profile $(PROFILE) --preview
	$(PYTHON) -m kd_components.cli datalist --dataset-dir $(OUT)/data --output $(OUT)/datalist.json --seed $(SEED)

## The comparison in docs/results_scarce.md and docs/results_compression.md: two teachers trained once on every label,
## then the students of both regimes (about 3 h 45 min on 2 CPU cores: `scripts/benchmark_kd.py --estimate`;
## restartable: run it again after an interruption and it continues). JOBS=N runs N independent stages at a time (many
## cores, a GPU). The pages' notes interpret one run: add them afterwards with
## `scripts/benchmark_kd.py --render-from outputs/benchmark/results.json --notes NOTES.md scarce=SCARCE.md ...`.
JOBS ?= 1
benchmark: install
	$(PYTHON) scripts/benchmark_kd.py --jobs $(JOBS)

## The teacher's branches in docs/branches_scarce.md: the hybrid demo teacher against its VGG-only and ViT-only
## ablations, each trained once on every label as in docs/results_scarce.md (teacher seed 0), and a student of each
## (student seeds 0, 2 and 4: the ones that learn from teacher seed 0 in `make benchmark`). About 1 h 30 min on 2 CPU
## cores (`scripts/benchmark_kd.py --estimate` with the same options; restartable). Given `make benchmark`'s output
## folder instead, its hybrid teacher and students are reused, and its results.json is replaced by this run's.
## docs/branches.md is the earlier regime's wider run (`--rows branches`: feature sources, fusion learning rate).
benchmark-branches: install
	$(PYTHON) scripts/benchmark_kd.py --jobs $(JOBS) --no-timing --seeds 0 2 4 --teacher-seeds 0 --regimes scarce \
		--rows labels_only soft_feature teacher_cnn teacher_vit soft_feature_from_cnn soft_feature_from_vit \
		--output-dir outputs/branches --results-md docs/branches_scarce.md

## The CPU student search in docs/students.md: every candidate of kd_components/networks/candidates.py distilled in
## the scarce regime (3 seeds; about 1 h 50 min on 2 CPU cores, minutes on a GPU with JOBS=16; docs/students_kd.md is
## still the run of the regime of docs/results_long_budget.md), then
## timed with OpenVINO on this CPU (about 18 min; run that part on the CPU the page is about).
benchmark-students: install-test
	$(PYTHON) scripts/benchmark_kd.py --jobs $(JOBS) --no-timing --seeds 0 1 2 --rows students --regimes scarce \
		--output-dir outputs/students --results-md docs/students_kd.md
	$(PYTHON) scripts/benchmark_students.py --kd-results outputs/students/results.json

## The default test suite (slow tests excluded) and the linter.
test: install-test lint
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

slow-test: install-test
	$(PYTHON) -m pytest -q -m slow

## The MONAI Deploy application's tests (pytest -m deploy) in a virtual environment of its own: the App SDK makes
## `import monai` import Holoscan, so it stays out of the main environment. Made once, reused after.
DEPLOY_VENV ?= .venv-deploy
deploy-test:
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet -r requirements-torch.txt
	$(DEPLOY_VENV)/bin/python -m pip install --quiet -e ".[deploy,test]"
	$(DEPLOY_VENV)/bin/python -m pytest -q -m deploy
