# Every target that runs code depends on .venv, which scripts/bootstrap.sh builds
# from requirements.lock, so each command below works from a fresh clone.
PY := .venv/bin/python
# The demo preset's folders (pipeline/config.py): cxr run, report and serve find them with no flags.
DEMO_DIR := demo
# Extra flags for the demo's `cxr run`, e.g. make demo DEMO_RUN_FLAGS="--set training.precision=float32".
DEMO_RUN_FLAGS ?=

.PHONY: setup compile-all demo test test-fast test-slow bench lock clean image

.venv/.installed: requirements.lock requirements-schemas.lock setup.py scripts/bootstrap.sh
	scripts/bootstrap.sh
	touch $@

setup: .venv/.installed

demo: setup
	.venv/bin/cxr demo-data --out $(DEMO_DIR)/raw --per-class 100
	.venv/bin/cxr build-tfrecords \
	  --covid-radiography $(DEMO_DIR)/raw/covid19-radiography-database \
	  --curated $(DEMO_DIR)/raw/curated-cxr \
	  --nih $(DEMO_DIR)/raw/nih-chest-xrays \
	  --out $(DEMO_DIR)/tfrecords --span 1 --overwrite
	.venv/bin/cxr run --preset demo $(DEMO_RUN_FLAGS)
	scripts/demo_predict.sh $(DEMO_DIR)
	.venv/bin/cxr report

# The tests import more than make demo, which is all bootstrap compiles (scripts/bytecode.py).
compile-all: setup
	$(PY) -m compileall -q -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') > /dev/null || true

# Two pytest-xdist workers, each test module whole on one of them (its fixtures built once; the image's
# environment and the small model once per run): 29.5 min against 46 min in one process on CI's two
# cores (bench/RESULTS.md, "Test suite"). XDIST= runs serially. Every test also passes alone.
XDIST ?= -n 2 --dist loadfile

test: compile-all
	$(PY) -m pytest $(XDIST) tests

test-fast: compile-all
	$(PY) -m pytest $(XDIST) tests -m "not slow"

test-slow: compile-all
	$(PY) -m pytest $(XDIST) tests -m slow

bench: setup
	$(PY) bench/ingest.py --write bench/RESULTS.md
	$(PY) bench/train.py --write bench/RESULTS.md
	$(PY) bench/serving.py --write bench/RESULTS.md
	$(PY) bench/proxy.py --write bench/RESULTS.md
	$(PY) bench/proxy_memory.py --write bench/RESULTS.md
	$(PY) bench/dicom.py --write bench/RESULTS.md
	$(PY) bench/dicom_node.py --write bench/RESULTS.md

# The pipeline image for Kubeflow (needs Docker): make image IMAGE=registry.example.com/cxr-pipeline:1
IMAGE ?= cxr-pipeline:latest
image:
	docker build -f kubeflow/Dockerfile -t $(IMAGE) .

# requirements.lock for development and CI (requirements.in and the test-only requirements-dev.in);
# kubeflow/image.lock for the pipeline image: requirements.in's packages at the development lock's
# versions plus TensorFlow's CUDA libraries, without the test-only ones. Both carry every file's
# sha256, and every install checks them (scripts/bootstrap.sh, kubeflow/Dockerfile: --require-hashes).
LOCK_TARGET := --python-version 3.10 --python-platform x86_64-manylinux_2_28 --generate-hashes
lock:
	uv pip compile $(LOCK_TARGET) requirements.in requirements-dev.in -o requirements.lock
	uv pip compile $(LOCK_TARGET) --no-deps requirements-schemas.in -c requirements.lock -o requirements-schemas.lock
	uv pip compile $(LOCK_TARGET) requirements.in kubeflow/image.in -c requirements.lock -o kubeflow/image.lock

clean:
	rm -rf .venv $(DEMO_DIR) build *.egg-info
