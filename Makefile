# One command each on a fresh machine with only Python: `make demo`, `make test`, `make lab`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medcore-installed

.PHONY: install demo test test-fast browser lab book tensorboard clean

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

test: $(STAMP) browser
	$(PY) -m pytest -q $(ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(ARGS)

# The browser test opens the built book in headless Chromium. Installed from the system's packages where that is
# allowed (root, or sudo without a password); otherwise one line says what to install, and the tests still run.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
	    && ! command -v google-chrome >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true >/dev/null 2>&1; then sudo="sudo -n"; else sudo=no; fi; \
	  if [ "$$sudo" != no ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make: installing Chromium for the browser test (apt-get install chromium)"; \
	    { $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	      || echo "make: apt-get install chromium failed; the browser test needs Chromium: install it and rerun"; \
	  else \
	    echo "make: the browser test needs Chromium: install it (Debian/Ubuntu: sudo apt-get install chromium) and rerun"; \
	  fi; \
	fi

lab: $(STAMP)
	$(PY) -m jupyter lab notebooks/

book: $(STAMP)
	$(PY) -m medcore book

# TensorBoard events of training: runs/<profile>/train/runs/ (make demo, notebook 03); `medcore train` writes them
# to checkpoints/<name>/runs/ (make tensorboard LOGDIR=checkpoints)
LOGDIR ?= runs
tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir $(LOGDIR)

clean:
	rm -rf _build runs
