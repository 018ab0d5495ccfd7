# layertap: development tasks. Needs only Python 3.10+ and PyPI; `make demo` on a fresh clone
# builds .venv first.
#
#   make .venv    create .venv and install layertap editable with every backend and dev tool
#   make demo     extract features from the bundled example model and images
#   make test     lint, then the whole test suite once per backend (tensorflow, jax, torch)
#   make lint     ruff check, ruff format --check, mypy
#   make bench    run benchmarks/*.py
#   make docs     build the documentation site into site/ (mkdocs build --strict)
#   make docs-serve  serve it at http://127.0.0.1:8000, rebuilt on every change
#
# Variables: PYTHON (the interpreter that creates .venv), PYTEST_ARGS (extra pytest
# arguments, e.g. PYTEST_ARGS="-k cli -x"), BACKENDS (which Keras backends `make test` runs).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.layertap-installed
# The docs extra (mkdocs, Material, mkdocstrings, mkdocs-click) has its own stamp, so
# `make test` never needs it.
DOCS_STAMP := $(VENV)/.layertap-docs-installed
EXTRAS := tensorflow,jax,parquet,ray,viz,analysis,dev
# The CPU build; pip's constraints here allow torch<=2.14.1 and any other version pulls
# a multi-GB CUDA build. Install it first so the extras never choose another torch.
TORCH := torch==2.13.0
# tf_keras (the `legacy` extra: SavedModel loading, and the tests that write tf.keras 2
# files) requires the full `tensorflow` wheel; tensorflow-cpu provides the same module,
# so the dev venv installs it without dependencies instead of a second TensorFlow.
TF_KERAS := tf-keras==2.21.*
# keras-hub (the `hub` extra; its backbones are in the tests) requires tensorflow-text,
# which requires the full `tensorflow` wheel: as for tf-keras, install both without
# dependencies and name keras-hub's other dependencies here.
KERAS_HUB := 'keras-hub==0.32.*' 'tensorflow-text==2.21.*'
KERAS_HUB_DEPS := absl-py regex rich 'kagglehub!=1.0.1' kagglesdk==0.1.28 sentencepiece tokenizers
BACKENDS ?= tensorflow jax torch
PYTEST_ARGS ?=

DEMO_MODEL := examples/model/shapes_cnn.keras
DEMO_IMAGES := examples/images
DEMO_OUT := demo-output/features.h5

.PHONY: .venv demo test lint bench docs docs-serve clean distclean

.venv: $(STAMP)

# Re-runs when pyproject.toml changes (new dependencies or extras).
$(STAMP): pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
		|| { echo "layertap needs Python 3.10+; set PYTHON=python3.x" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install '$(TORCH)'
	$(BIN)/python -m pip install -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip install --no-deps '$(TF_KERAS)' $(KERAS_HUB)
	$(BIN)/python -m pip install $(KERAS_HUB_DEPS)
	touch $(STAMP)

# The main job: tap five places (two inside the nested backbone) of the example model
# over the sample images, then show what the file holds.
demo: $(STAMP)
	$(BIN)/layertap extract $(DEMO_MODEL) $(DEMO_IMAGES) \
		--layer early=backbone/block_1_conv \
		--layer backbone/block_4_add \
		--layer gap \
		--layer embedding \
		--layer probs=logits \
		--out $(DEMO_OUT) --overwrite
	@$(BIN)/python -c "$$DEMO_SHOW" $(DEMO_OUT)

define DEMO_SHOW
import json, sys, h5py, numpy as np
f = h5py.File(sys.argv[1], 'r')
print(sys.argv[1] + ':')
for name, ds in f.items():
    if isinstance(ds, h5py.Dataset) and 'key' in ds.attrs:
        print(f'  {name:24} {str(ds.shape):20} {ds.dtype}  (layer {ds.attrs["layer"]})')
paths = list(f['paths'].asstr())
print(f'  paths: {len(paths)} rows; failed: {len(f["failed/path"])}')
print('  preprocessing:', f.attrs['preprocessing'])
classes = ['circle', 'square', 'triangle']
pred = [classes[i] for i in np.asarray(f['probs']).argmax(1)]
hits = sum(c in p for c, p in zip(pred, paths))
print(f'  predicted classes match the file names for {hits} of {len(paths)} images')
endef
export DEMO_SHOW

test: lint
	@status=0; for backend in $(BACKENDS); do \
		echo "== pytest with KERAS_BACKEND=$$backend"; \
		start=$$(date +%s); \
		KERAS_BACKEND=$$backend $(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
		echo "== $$backend: exit $$rc in $$(( $$(date +%s) - start )) s"; \
		if [ $$rc -eq 5 ] && [ -n "$(strip $(PYTEST_ARGS))" ]; then \
			echo "== $$backend: PYTEST_ARGS selected no test; not a failure"; \
		elif [ $$rc -ne 0 ]; then \
			status=1; \
		fi; \
	done; \
	if [ $$status -ne 0 ]; then echo "== make test: FAILED" >&2; fi; \
	exit $$status

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	@set -e; found=0; for script in benchmarks/[!_]*.py; do \
		[ -f "$$script" ] || continue; found=1; \
		echo "== $$script"; $(BIN)/python "$$script"; \
	done; \
	[ $$found -eq 1 ] || echo "no benchmarks/*.py yet"

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install -e '.[docs]'
	touch $(DOCS_STAMP)

# Material prints a banner about its future unless told not to; it is not a warning of
# this build, and --strict fails on every warning of this build.
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --strict

clean:
	rm -rf site demo-output .pytest_cache .mypy_cache .ruff_cache build dist src/*.egg-info

distclean: clean
	rm -rf $(VENV)
