# One command sets everything up on a fresh machine with only Python:
#   make test        - create .venv, install the package with its dev extras, run the tests
#   make quickstart  - create .venv, install, run the embedded default job
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-slow lint quickstart benchmark clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# The CPU build of TensorFlow (extra `cpu`); a GPU machine installs `.[gpu,dev,serving]`.
	$(BIN)/pip install -e '.[cpu,dev,serving]'
	# tensorflow-serving-api pins the GPU `tensorflow` wheel; we already have tensorflow-cpu,
	# so its protos are installed without that requirement (see README "Serving").
	$(BIN)/pip install --no-deps 'tensorflow-serving-api>=2.21,<2.22'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

quickstart: $(STAMP)
	$(BIN)/deeplense quickstart --out quickstart

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
