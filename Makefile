# Two commands: `make demo` and `make test`. Each sets up .venv on a fresh machine
# (torch 2.13.0 first, from the local CPU wheel), then installs fewstep with its extras.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip --disable-pip-version-check
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install torch==2.13.0

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -e ".[test]"
	$(PIP) install --no-deps k-diffusion==0.1.1.post1
	touch $@

demo: $(VENV)/.installed
	$(BIN)/fewstep demo

test: $(VENV)/.installed
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check fewstep tests bench
	$(BIN)/ruff format --check fewstep tests bench

clean:
	rm -rf $(VENV) out
