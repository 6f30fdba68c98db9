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
GPUS ?= 0
BUILD ?= build
SUB ?=
SOLUTION ?=
TYPES ?=
PYTEST_ARGS ?=

.PHONY: help setup test bench data types folds synth score validate leaderboard clean-venv

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

bench: $(SETUP)  ## speed figures: metric and RLE against naive references
	$(PYTHON) -m competition bench --data $(DATA_DIR)

data: $(SETUP)  ## download and unpack the competition into DATA_DIR (needs Kaggle credentials)
	$(PYTHON) -m competition download --data-dir $(DATA_DIR)

types: $(SETUP)  ## classify DATA_DIR/stage1_train into image types, with contact sheets
	$(PYTHON) -m competition types $(DATA_DIR)/stage1_train --out $(BUILD)/types/stage1_train.csv --sheets $(BUILD)/types/sheets

folds: $(SETUP)  ## write the stratified folds file once (build/folds.csv)
	$(PYTHON) -m competition folds $(DATA_DIR)/stage1_train --out $(BUILD)/folds.csv

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

clean-venv:  ## remove the environment
	rm -rf $(VENV)
