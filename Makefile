# Two commands for a new user on a fresh machine:
#   make demo   set up .venv and run the main job on the bundled checkpoint
#   make test   set up .venv and run the tests (make test-fast: only those not marked slow)
# On a GPU machine pick another PyTorch build, e.g.  make test TORCH_SPEC="torch==2.11.0"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
# the tests run in one worker process per core, at most 4, each taking whole files (module fixtures run once);
# `make test PYTEST_WORKERS=` runs them in one process
PYTEST_WORKERS ?= --numprocesses=auto --maxprocesses=4 --dist=loadfile
DEMO_OUT ?= demo-out
CHROMIUM ?= /usr/bin/chromium
NODE_DEPS := deploy/node/node_modules/.installed deploy/web/node_modules/.installed
APT_GET := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get

RUNTIME_VENV ?= .venv-runtime
TARGETS_VENV ?= .venv-targets
LLAMA_CPP_PYTHON_VERSION := 0.3.36
LLAMA_CPP_SDIST := .cache/llama_cpp_python-$(LLAMA_CPP_PYTHON_VERSION).tar.gz

.PHONY: setup setup-python demo test test-fast clean

# demo needs Python only; the tests also need the Node.js side, Chromium and a runtime-only install.
setup-python: $(VENV)/.installed
setup: setup-python $(RUNTIME_VENV)/.installed $(TARGETS_VENV)/.installed $(NODE_DEPS) $(CHROMIUM) $(LLAMA_CPP_SDIST)

$(VENV)/.installed: pyproject.toml setup.py runtime/native/rwkv_cpu_ops.cc
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test,export]"
	touch $@

# What `pip install rwkv-deploy` gives a user: the runtime without PyTorch (tests/test_runtime_install.py).
$(RUNTIME_VENV)/.installed: pyproject.toml setup.py runtime/native/rwkv_cpu_ops.cc
	$(PYTHON) -m venv $(RUNTIME_VENV)
	$(RUNTIME_VENV)/bin/python -m pip install -q --disable-pip-version-check -e .
	touch $@

# What `pip install "rwkv-deploy[targets]"` gives: check-trt, build-engine and package --triton without PyTorch.
$(TARGETS_VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(TARGETS_VENV)
	$(TARGETS_VENV)/bin/python -m pip install -q --disable-pip-version-check -e ".[targets]"
	touch $@

# Node.js side (deploy/node, deploy/web) and Debian's Chromium for the browser test. onnxruntime-node uses the
# CPU binaries inside its npm package: deploy/node/.npmrc skips its download of CUDA binaries. No browser is
# ever downloaded: apt-get installs Debian's chromium when $(CHROMIUM) is missing (as root, else with sudo).
deploy/%/node_modules/.installed: deploy/%/package.json deploy/%/package-lock.json
	@command -v npm >/dev/null || { $(APT_GET) update -q && $(APT_GET) install -y -q nodejs npm; }
	cd deploy/$* && npm ci --no-audit --no-fund
	touch $@

$(CHROMIUM):
	$(APT_GET) update -q
	$(APT_GET) install -y -q --no-install-recommends chromium

# llama.cpp's own HF -> GGUF converter, vendored in the llama-cpp-python sdist (the GGUF tests run it offline;
# scripts/llama_cpp_oracle.py builds llama.cpp from it). Fetched once from PyPI into an ignored cache folder.
$(LLAMA_CPP_SDIST): | $(VENV)/.installed
	$(BIN)/python -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
		"llama-cpp-python==$(LLAMA_CPP_PYTHON_VERSION)" -d .cache

BUNDLED := models/bundled/rwkv7-pystdlib-tiny.pth

demo: setup-python
	@echo "== 1/7 inspect the bundled checkpoint"
	$(BIN)/rwkv-deploy inspect $(BUNDLED)
	@echo "== 2/7 export fp32 (with the prefill graph) and fp16 ONNX packages"
	$(BIN)/rwkv-deploy export $(BUNDLED) --out $(DEMO_OUT)/fp32 --prefill --force
	$(BIN)/rwkv-deploy export $(BUNDLED) --out $(DEMO_OUT)/fp16 --precision fp16 --force
	@echo "== 3/7 validate both against the PyTorch reference"
	$(BIN)/rwkv-deploy validate $(DEMO_OUT)/fp32 --checkpoint $(BUNDLED)
	$(BIN)/rwkv-deploy validate $(DEMO_OUT)/fp16 --checkpoint $(BUNDLED)
	@echo "== 4/7 package the fp32 export into one archive"
	$(BIN)/rwkv-deploy package $(DEMO_OUT)/fp32 -o $(DEMO_OUT)/rwkv7-pystdlib-tiny-fp32.zip --force
	@echo "== 5/7 verify the archive"
	$(BIN)/rwkv-deploy verify $(DEMO_OUT)/rwkv7-pystdlib-tiny-fp32.zip
	@echo "== 6/7 generate from the package with ONNX Runtime (no PyTorch in the runtime)"
	$(BIN)/rwkv-deploy generate $(DEMO_OUT)/fp32 --prompt "def " --max-tokens 160 --greedy
	@echo "== 7/7 and sampled, from the fp16 package"
	$(BIN)/rwkv-deploy generate $(DEMO_OUT)/fp16 --prompt "class " --max-tokens 160 --temperature 0.7 --top-p 0.9 --seed 1
	@echo "demo outputs in $(DEMO_OUT)/ (validation reports in $(DEMO_OUT)/*/validation/)"

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS)

# the fast tier: every test not marked `slow` (the slow ones export packages at run time); `make test` runs all
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_WORKERS)

clean:
	rm -rf $(VENV) $(RUNTIME_VENV) $(TARGETS_VENV) $(DEMO_OUT) .pytest_cache deploy/node/node_modules deploy/web/node_modules
