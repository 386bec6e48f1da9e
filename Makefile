# Two commands for a fresh machine: `make demo` and `make test`. Both create or reuse .venv and pip's cache.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian packages: Fashion-MNIST for the demo and benchmarks, Chromium + driver for the browser test.
APT_PKGS := dataset-fashion-mnist chromium chromium-driver fonts-dejavu-core

.PHONY: demo test bench sysdeps clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade-strategy only-if-needed -e '.[dev]'
	touch $(STAMP)

# Installs what is missing when we are root with apt; otherwise the tests that need it skip with a reason.
sysdeps:
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing $$missing"; \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing) >/dev/null \
	    || echo "warning: apt-get could not install $$missing"; \
	fi

test: $(STAMP) sysdeps
	$(VENV)/bin/ruff check src tests bench
	$(PY) -m pytest -q

demo: $(STAMP) sysdeps
	$(PY) -m picstory.demo

bench: $(STAMP) sysdeps
	$(PY) bench/fashion.py

clean:
	rm -rf $(VENV) build src/*.egg-info
