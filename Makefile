# The pipeline. Every target builds the environment first (.venv, pinned by requirements.lock).
# Files are the contract between stages; each recipe is one `python -m competition ...` call.

SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
SETUP := $(VENV)/.setup-stamp

DATA_DIR ?= data/dsb2018
RECIPE ?= cpu
STAGE ?= stage1
# `make adapt`: the split the labels file labels (a folder of DATA_DIR, or a path)
SPLIT ?= $(STAGE)_test
GPUS ?= 0
BUILD ?= build
MODELS ?= models
TTA ?= flips
SIZE_PASSES ?= 2
# Colour views `make tune` tries per image type (gray, gbr, brg: the grey level and the
# channels rotated); it keeps them where averaging their probabilities with the image's
# scores better, cross-fitted over conditions (empty: none).
COLOUR_VIEWS ?= gray gbr brg
# AVERAGE_WITH_ALL=1: `make tune` also tries a type's own members averaged with the all-type
# ones (a second network on that type's images at prediction; off by default).
AVERAGE_WITH_ALL ?=
# What `make tune` counts its pixel sizes (min_seed_size, min_size) in: image (the image's own
# pixels) or network (the pixels of the network's input, following each image's resize factor).
SIZE_UNITS ?= image
# OTHER_FOLDS=models/fold3: models folders holding RECIPE trained on other folds (TRAIN_FOLD=N);
# `make tune` tunes on their out-of-fold maps too (every fold's conditions).
OTHER_FOLDS ?=
# What runs the network: auto (the fastest installed on the CPU, torch on CUDA), torch,
# onnxruntime or openvino.
ENGINE ?= auto
# Predictors working on different images at once, each on its share of the threads (empty:
# auto, 2 on a CPU with OpenVINO or ONNX Runtime, else 1; the objects are the same).
STREAMS ?=
STREAMING = $(if $(STREAMS),--image-streams $(STREAMS))
# Resize factors of the first nucleus-size pass (empty: the default, 1 0.5 0.25).
SURVEY ?=
# Resizing of the size-estimated passes (empty: the defaults): the nucleus diameter they aim
# at (default: each member's), the largest up-scaling (default 2), the most pixels an image
# is up-scaled to (default 2000000; 0: no limit), the pixels the size
# passes see of a large image (default 500000; 0: all of it), and the octaves within which a
# new size estimate keeps the factors a pass ran at (default 0.125; 0: exact factors only);
# the survey enlarges images of small nuclei (under SURVEY_RANGE of the members' diameter,
# default 1.6) by SURVEY_UPSCALE (default 2; 0: never) and trusts the view the members are
# surest of (SURVEY_RULE=confidence, the default), or its largest factor whose nuclei
# measure within SURVEY_RANGE of the members' diameter (SURVEY_RULE=fit; 1: the closest view).
# The final pass shrinks an image of large nuclei only until they measure SHRINK_RANGE times
# the members' diameter (default 0: each member's training scale jitter; 1: to the diameter).
NUCLEUS_PX ?=
MAX_UPSCALE ?=
UPSCALE_MAX_PIXELS ?=
SIZE_MAX_PIXELS ?=
RESCALE_TOLERANCE ?=
SURVEY_RANGE ?=
SURVEY_UPSCALE ?=
SURVEY_RULE ?=
SHRINK_RANGE ?=
RESIZING = $(if $(NUCLEUS_PX),--nucleus-px $(NUCLEUS_PX)) $(if $(MAX_UPSCALE),--max-upscale $(MAX_UPSCALE)) \
	$(if $(UPSCALE_MAX_PIXELS),--upscale-max-pixels $(UPSCALE_MAX_PIXELS)) \
	$(if $(SIZE_MAX_PIXELS),--size-max-pixels $(SIZE_MAX_PIXELS)) $(if $(RESCALE_TOLERANCE),--rescale-tolerance $(RESCALE_TOLERANCE)) \
	$(if $(SURVEY_RANGE),--survey-range $(SURVEY_RANGE)) $(if $(SURVEY_UPSCALE),--survey-upscale $(SURVEY_UPSCALE)) \
	$(if $(SURVEY_RULE),--survey-rule $(SURVEY_RULE)) $(if $(SHRINK_RANGE),--shrink-range $(SHRINK_RANGE))
SIZING = $(if $(SURVEY),--survey-factors $(SURVEY)) $(RESIZING)
MEMBER ?=
FOLD ?= 0
# TRAIN_FOLD=N: train-all and train-one validate every member on fold N instead of the
# recipe's (give another MODELS folder: a second condition-out fold for the calibration).
TRAIN_FOLD ?=
FOLDS_BY ?= conditions
# The folds file that folds writes and train-all, train-one and tune read (a second one,
# e.g. FOLDS=build/folds-random.csv FOLDS_BY=random, gives a pilot's random-fold score;
# holdout always reads build/folds.csv).
FOLDS ?= $(BUILD)/folds.csv
# HOLDOUT_SCALE=F: the holdout fold resized by F (every nucleus F times its size), in its own
# folder and with its own calibration file, to measure unseen magnifications.
HOLDOUT_SCALE ?= 1
SCALED := $(filter-out 1 1.0,$(HOLDOUT_SCALE))
HOLDOUT := $(BUILD)/holdout-f$(FOLD)$(if $(SCALED),-x$(HOLDOUT_SCALE))
# Written by `make holdout` (per image: type, out-of-sample score, distance to the training
# conditions). `make submit` reads CALIBRATIONS for the submission's expected_score: every
# calibration-f*.json of the recipe folder, pooled (the recipe's holdout fold and those of
# its members trained on other folds, TRAIN_FOLD=N, copied in: README, "A second fold").
CALIBRATION ?= $(MODELS)/$(RECIPE)/calibration-f$(FOLD).json
CALIBRATIONS ?= $(wildcard $(MODELS)/$(RECIPE)/calibration-f*.json)
HOLDOUT_CALIBRATION := $(if $(SCALED),$(HOLDOUT)/calibration.json,$(CALIBRATION))
DEMO := $(BUILD)/demo
DEMO_RECIPE ?= demo
# One GPU or CPU: a plain process; GPUS>1: the same entry point under torchrun (DDP).
LAUNCH := $(if $(filter-out 0 1,$(GPUS)),$(VENV)/bin/torchrun --standalone --nproc_per_node=$(GPUS) -m competition,$(PYTHON) -m competition)
SUB ?=
SOLUTION ?=
AGAINST ?=
TYPES ?=
PYTEST_ARGS ?=

.PHONY: help setup test bench data types folds synth score validate leaderboard \
	train-all train-one refit adapt tune submit holdout report demo clean-venv

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 16

$(SETUP): requirements.lock pyproject.toml
	@test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -r requirements.lock
	$(PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $@

setup: $(SETUP)  ## create .venv with the pinned stack (torch, smp, albumentations, ...)

test: $(SETUP)  ## run the test suite
	$(PYTHON) -m pytest $(PYTEST_ARGS)

bench: $(SETUP)  ## speed figures: metric and RLE against naive references; inference of RECIPE when trained
	$(PYTHON) -m competition bench --data $(DATA_DIR)
	@if ls $(MODELS)/$(RECIPE)/*/*/best.pt >/dev/null 2>&1; then \
		$(PYTHON) -m competition.bench_inference --models $(MODELS) --recipe $(RECIPE) --data $(DATA_DIR) --engine $(ENGINE) --size-passes $(SIZE_PASSES) $(RESIZING) $(STREAMING); \
	else echo "no trained $(MODELS)/$(RECIPE): train it (make train-all RECIPE=$(RECIPE)) for the inference figures"; fi

data: $(SETUP)  ## download and unpack the competition into DATA_DIR (needs Kaggle credentials)
	$(PYTHON) -m competition download --data-dir $(DATA_DIR)

types: $(SETUP)  ## classify DATA_DIR/stage1_train into image types, with contact sheets
	$(PYTHON) -m competition types $(DATA_DIR)/stage1_train --out $(BUILD)/types/stage1_train.csv --sheets $(BUILD)/types/sheets

folds: $(SETUP)  ## write the folds file FOLDS once (build/folds.csv): whole imaging conditions per fold (FOLDS_BY=random: the old random folds)
	$(PYTHON) -m competition folds $(DATA_DIR)/stage1_train --out $(FOLDS) --by $(FOLDS_BY)

synth: $(SETUP)  ## generate the synthetic Kaggle-layout dataset into build/synth
	$(PYTHON) -m competition synth $(BUILD)/synth --overwrite

score: $(SETUP)  ## score SUB against SOLUTION (Kaggle format) and record it in the leaderboard
	@test -n "$(SUB)" -a -n "$(SOLUTION)" || { echo "usage: make score SUB=submission.csv SOLUTION=solution.csv [TYPES=types.csv]"; exit 2; }
	$(PYTHON) -m competition score $(SUB) $(SOLUTION) $(if $(TYPES),--types $(TYPES))

validate: $(SETUP)  ## validate SUB against DATA_DIR/STAGE_test and the sample submission
	@test -n "$(SUB)" || { echo "usage: make validate SUB=submission.csv"; exit 2; }
	$(PYTHON) -m competition validate $(SUB) --data $(DATA_DIR)/$(STAGE)_test $(if $(wildcard $(DATA_DIR)/$(STAGE)_sample_submission.csv),--sample $(DATA_DIR)/$(STAGE)_sample_submission.csv)

leaderboard: $(SETUP)  ## print the local leaderboard history, best first
	$(PYTHON) -m competition leaderboard

train-all: $(SETUP)  ## train every unfinished member of RECIPE on DATA_DIR (resumes; GPUS=N for DDP)
	$(LAUNCH) train-all --recipe $(RECIPE) --data $(DATA_DIR) --models $(MODELS) --folds $(FOLDS) $(if $(MAX_EPOCHS),--max-epochs $(MAX_EPOCHS)) $(if $(TRAIN_FOLD),--fold $(TRAIN_FOLD))

train-one: $(SETUP)  ## train one member: make train-one MEMBER=type/name RECIPE=...
	@test -n "$(MEMBER)" || { echo "usage: make train-one MEMBER=TYPE/NAME [RECIPE=$(RECIPE)]"; exit 2; }
	$(LAUNCH) train-one --recipe $(RECIPE) --member $(MEMBER) --data $(DATA_DIR) --models $(MODELS) --folds $(FOLDS) $(if $(TRAIN_FOLD),--fold $(TRAIN_FOLD))

refit: $(SETUP)  ## train RECIPE's tuned members again on every training image into MODELS/RECIPE-refit (then make submit RECIPE=RECIPE-refit)
	$(LAUNCH) refit --recipe $(RECIPE) --data $(DATA_DIR) --models $(MODELS) --folds $(FOLDS) $(if $(MAX_EPOCHS),--max-epochs $(MAX_EPOCHS))

adapt: $(SETUP)  ## fine-tune RECIPE's routed members on SPLIT (stage1_test) labelled by LABELS (a submission CSV of it) into MODELS/RECIPE-adapt
	@test -n "$(LABELS)" || { echo "usage: make adapt RECIPE=cpu-refit LABELS=submissions/stage1_test-cpu.csv [SPLIT=stage1_test]"; exit 2; }
	$(PYTHON) -m competition adapt --recipe $(RECIPE) --labels $(LABELS) --split $(SPLIT) --data $(DATA_DIR) --models $(MODELS) --folds $(FOLDS) $(if $(MAX_EPOCHS),--max-epochs $(MAX_EPOCHS))

tune: $(SETUP)  ## tune the post-processing per type on the out-of-fold maps of RECIPE (cross-fitted over conditions)
	$(PYTHON) -m competition tune --recipe $(RECIPE) --models $(MODELS) --data $(DATA_DIR) --folds $(FOLDS) --colour-views "$(COLOUR_VIEWS)" --size-units $(SIZE_UNITS) $(if $(AVERAGE_WITH_ALL),--average-with-all) $(if $(OTHER_FOLDS),--other-folds $(OTHER_FOLDS))

submit: $(SETUP)  ## predict DATA_DIR/STAGE_test with RECIPE, write and validate submissions/<recipe>-<stage>-<time>.csv
	$(PYTHON) -m competition submit --recipe $(RECIPE) --data $(DATA_DIR) --stage $(STAGE) --models $(MODELS) --tta $(TTA) --size-passes $(SIZE_PASSES) --engine $(ENGINE) $(SIZING) $(STREAMING) \
		$(if $(SOLUTION),--solution $(SOLUTION),$(if $(CALIBRATIONS),--calibration $(CALIBRATIONS))) $(if $(KAGGLE_SUBMIT),--kaggle)

holdout: $(SETUP)  ## the whole submit pipeline on training fold FOLD (held out by RECIPE's members), scored like the leaderboard
	test -d $(HOLDOUT)/stage1_test || $(PYTHON) -m competition holdout --data $(DATA_DIR) --folds $(BUILD)/folds.csv --fold $(FOLD) --out $(HOLDOUT) --scale $(HOLDOUT_SCALE)
	$(PYTHON) -m competition submit --recipe $(RECIPE) --data $(HOLDOUT) --models $(MODELS) --tta $(TTA) --size-passes $(SIZE_PASSES) --engine $(ENGINE) $(SIZING) $(STREAMING) \
		--out-dir $(HOLDOUT)/submissions --solution $(HOLDOUT)/solution.csv --leaderboard $(HOLDOUT)/leaderboard.csv \
		--crossfit --calibration $(HOLDOUT_CALIBRATION)

report: $(SETUP)  ## HTML report of SUB (with SOLUTION: true contours and scores; with AGAINST=other.csv: where the two disagree)
	@test -n "$(SUB)" || { echo "usage: make report SUB=submission.csv [SOLUTION=solution.csv | AGAINST=other.csv]"; exit 2; }
	$(PYTHON) -m competition report $(SUB) --data $(DATA_DIR)/$(STAGE)_test $(if $(SOLUTION),--solution $(SOLUTION)) $(if $(AGAINST),--against $(AGAINST))

demo: $(SETUP)  ## the whole pipeline on generated data: synth, train, tune, submit, score, leaderboard
	$(PYTHON) -m competition synth $(DEMO)/data --overwrite
	$(PYTHON) -m competition train-all --recipe $(DEMO_RECIPE) --data $(DEMO)/data --models $(DEMO)/models --folds $(DEMO)/folds.csv --cache-dir ''
	$(PYTHON) -m competition tune --recipe $(DEMO_RECIPE) --models $(DEMO)/models --data $(DEMO)/data --colour-views "$(COLOUR_VIEWS)"
	$(PYTHON) -m competition submit --recipe $(DEMO_RECIPE) --data $(DEMO)/data --models $(DEMO)/models --out-dir $(DEMO)/submissions \
		--tta flips --solution $(DEMO)/data/stage1_solution.csv
	$(PYTHON) -m competition report $$(ls -t $(DEMO)/submissions/$(DEMO_RECIPE)-*.csv | head -1) --data $(DEMO)/data/stage1_test \
		--solution $(DEMO)/data/stage1_solution.csv --out $(DEMO)/report
	$(PYTHON) -m competition leaderboard --path $(DEMO)/submissions/leaderboard.csv

clean-venv:  ## remove the environment
	rm -rf $(VENV)
