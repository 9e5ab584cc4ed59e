# One command each on a fresh machine with only Python: `make demo`, `make test`, `make lab`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medcore-installed

.PHONY: install demo test test-fast lab book clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name medcore --display-name "Python (medcore)" >/dev/null
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m medcore run --profile demo $(ARGS)
	$(PY) -m medcore book

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

lab: $(STAMP)
	$(PY) -m jupyter lab notebooks/

book: $(STAMP)
	$(PY) -m medcore book

clean:
	rm -rf _build runs
