# Both targets create the virtual environment on first use; torch is pinned so that pip takes the
# local CPU wheel instead of a multi-gigabyte CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0

.PHONY: demo test env lint clean bench

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e '.[all,test,oracle]' $(TORCH_PIN)
	touch $@

env: $(VENV)/.installed

lint: env
	$(VENV)/bin/ruff check src tests examples benchmarks docs

test: lint
	$(PY) -m pytest -q

demo: env
	$(VENV)/bin/rnnkit demo

clean:
	rm -rf $(VENV)

# Every peer side by side (installs Flax/JAX on top of the test environment); writes PEERS.md.
bench: env
	$(PY) -m pip install -q -e '.[all,test,oracle,bench]' $(TORCH_PIN)
	$(PY) benchmarks/run_all.py --out benchmarks/PEERS.md
