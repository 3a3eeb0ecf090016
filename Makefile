# Two commands for a fresh machine with python3 and make:
#   make demo   set up, then run the pipeline on sample photos against the local sandbox
#   make test   set up, then ruff, mypy and pytest
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV := $(BIN)/uv
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90

.PHONY: setup demo test test-slow test-containers lint typecheck pytest bench bench-quick lock \
	image clean

setup: $(STAMP)

# The installer comes from installer.lock, pinned and hash-checked, never from whatever
# `venv` bundles: Python 3.11's pip 23.2 resolves an extra a package asks for (prefect's
# httpx[http2]) against the newest release on the index instead of the lock's pin, so
# one upstream release broke every fresh install. The venv's own pip is used once, for
# two hash-checked wheels that have no dependencies; the setuptools `venv` also bundles
# (unpinned, and needed by nothing here) is removed, so the venv holds only pins.
$(UV): installer.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes -r installer.lock
	$(UV) pip uninstall --quiet --python $(BIN)/python setuptools
	touch $(UV)

# `uv pip sync` makes the venv exactly what the locks pin (hash-checked, no resolution,
# so nothing newer on the index is ever considered; anything else installed is removed),
# compiled to bytecode once, on both cores: where PYTHONDONTWRITEBYTECODE is set (as on
# these machines) Python never writes a .pyc, so without this every process compiled
# every module it imported, every time (half of each subprocess's CPU in the suite);
# then the project itself, a check that every requirement is met, and Prefect's
# database migration so the first run does not wait on it.
$(STAMP): $(UV) requirements.lock pyproject.toml
	$(UV) pip sync --quiet --python $(BIN)/python --require-hashes --compile-bytecode \
		requirements.lock installer.lock
	$(UV) pip install --quiet --python $(BIN)/python --no-deps --no-build-isolation -e .
	$(UV) pip check --quiet --python $(BIN)/python
	$(BIN)/prefect server database upgrade -y >/dev/null
	touch $(STAMP)

demo: setup
	$(BIN)/modelset demo

# The linters beside the tests, not before them: mypy takes half a minute of one core
# on a clean clone, which the tests' waits absorb. Any of the three failing fails it.
test: setup
	$(MAKE) --no-print-directory -j3 lint typecheck pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy

# Three pytest workers on the two cores (the suite waits on leases, restarts and flow
# runs for a third of its time: 9:31 with setup against 10:10 for two workers, both on a
# clean clone), each taking the next test from one queue, dearest first
# (tests/conftest.py): the long tests start first, and no worker is left running a long
# one alone at the end. Each worker starts its own servers (Prefect, moto, PostgreSQL),
# so no test sees another's work pool, deployments or buckets. The ten slowest tests
# are printed at the end (pyproject.toml). The project's own modules are compiled
# first, for the reason given at setup (PYTHONDONTWRITEBYTECODE).
pytest: setup
	$(BIN)/python -m compileall -q modelset tests
	$(BIN)/pytest -n 3 --dist load --maxschedchunk 1

# The tests marked slow (a burst of fifty deployment runs against the budget, and the
# look-alike measurements over hundreds of pictures: about two minutes): CI runs them
# after `make test`, which stays within ten minutes.
test-slow: setup
	$(BIN)/pytest -m slow

# The worker image (Containerfile), with docker where its engine answers, else podman.
# BASE_IMAGE is any Debian bookworm: no registry is reachable on the build machines, so
# by default it is a minimal root filesystem made with debootstrap (as root) and imported
# the first time; elsewhere `make image BASE_IMAGE=debian:bookworm-slim`. A rebuild with
# nothing changed takes its layers from the engine's cache, so tests may call it freely.
IMAGE ?= localhost/modelset:0.1.0
BASE_IMAGE ?= localhost/debian-min:bookworm
# The build trusts this machine's CA bundle while it downloads (a TLS-inspecting proxy),
# passed as a build secret: it never lands in the image.
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
ENGINE ?= $(shell if docker info >/dev/null 2>&1; then echo docker; \
	elif command -v podman >/dev/null 2>&1; then echo podman; fi)

image:
	@test -n "$(ENGINE)" || { echo "no container engine: install podman (apt-get install" \
		"podman runc debootstrap, docs/scale-out.md) or docker" >&2; exit 2; }
	@if [ "$(BASE_IMAGE)" = localhost/debian-min:bookworm ] && \
		! $(ENGINE) image inspect $(BASE_IMAGE) >/dev/null 2>&1; then \
		rootfs=$$(mktemp -d) && \
		debootstrap --variant=minbase bookworm $$rootfs http://deb.debian.org/debian && \
		rm -rf $$rootfs/var/cache/apt/archives/*.deb $$rootfs/var/lib/apt/lists/* && \
		tar -C $$rootfs -c . | $(ENGINE) import - $(BASE_IMAGE) && rm -rf $$rootfs; \
	fi
	$(ENGINE) build --network=host --build-arg BASE=$(BASE_IMAGE) -t $(IMAGE) -f Containerfile \
		$$(test -f $(CA_BUNDLE) && echo --secret id=ca,src=$(CA_BUNDLE)) .

# Flow runs in containers of the image, on a Docker pool (tests/test_containers.py, about
# four minutes): their session builds the image once with `make image` (from the engine's
# cache when nothing changed), starts podman's Docker API and runs prefect-docker workers.
# They need podman, runc and debootstrap as root (.ci/run installs them); where containers
# cannot run they skip, saying what to install. CI runs them after test-slow.
test-containers: setup
	$(BIN)/pytest -m containers

bench: setup
	$(BIN)/python -m bench

bench-quick: setup
	$(BIN)/python -m bench --quick

# Regenerates both locks after a change to pyproject.toml's dependencies or to
# installer.in, with the pinned installer: every package, and every extra a dependency
# asks for (prefect's httpx[http2] brings h2), is pinned with the hashes of its files.
# requirements.lock is the venv's: the dev tools, and the workers of container pools the
# tests start or configure (extras docker and kubernetes). requirements.runtime.lock is
# the image's: the package's own dependencies and its build backend only, at
# requirements.lock's versions, because the image runs flow runs and nothing else (no
# test or lint tools, no moto, scipy or mypy, no workers: about 300 MB less).
lock: $(UV)
	$(UV) pip compile --quiet installer.in --generate-hashes --python-version 3.11 -o installer.lock
	$(UV) pip compile --quiet pyproject.toml --extra dev --extra docker --extra kubernetes \
		--generate-hashes --python-version 3.11 -o requirements.lock
	$(UV) pip compile --quiet pyproject.toml image.in --constraint requirements.lock \
		--generate-hashes --python-version 3.11 -o requirements.runtime.lock

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
