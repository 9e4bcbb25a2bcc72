# Two commands for a new user on a fresh machine:
#   make demo   set up .venv and run the main job on the bundled checkpoint
#   make test   set up .venv and run the tests
# On a GPU machine pick another PyTorch build, e.g.  make test TORCH_SPEC="torch==2.11.0"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
DEMO_OUT ?= demo-out

.PHONY: setup demo test clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test,export]"
	touch $@

demo: setup
	$(BIN)/rwkv-deploy inspect

test: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache
