# `make demo` runs the example end to end; `make test` runs the whole suite.
# Both create and reuse a local virtualenv in .venv; nothing is installed system-wide.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# `make lint` runs ruff, checks the layers (lint-imports) and type-checks (mypy, with the lint
# extra's stubs). TYPECHECK=0 leaves out mypy and that extra, where the stubs cannot install
# (they need Python 3.11+: .ci/run's oldest-versions run).
TYPECHECK ?= 1
comma := ,
EXTRAS := test$(if $(filter 1,$(TYPECHECK)),$(comma)lint)
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
BUF := .tools/node_modules/.bin/buf
PYTEST_ARGS ?=
# Extra requirements pinned on top of the package's (e.g. the oldest supported versions).
PIP_EXTRA ?=

.PHONY: demo test test-asyncio lint style typecheck layers format tools clean bench dist docs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]' $(PIP_EXTRA)
	touch $(STAMP)

# buf (for the `buf lint` test) ships in an npm package; without npm that one test skips.
tools: $(BUF)
$(BUF):
	@if command -v npm >/dev/null 2>&1; then \
		npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf >/dev/null \
			|| echo "could not install buf; the buf lint test will be skipped"; \
	else echo "npm not found; the buf lint test will be skipped"; fi

demo: $(STAMP)
	$(BIN)/python example/run_demo.py

# django-grpc-bus against a hand-written grpcio servicer (bench/README.md); about 4 minutes.
bench: $(STAMP)
	$(BIN)/python bench/run.py

lint: style layers $(if $(filter 1,$(TYPECHECK)),typecheck)

style: $(STAMP)
	$(BIN)/ruff check django_grpc_bus tests example
	$(BIN)/ruff format --check django_grpc_bus tests example

# [tool.mypy] and [tool.django-stubs] in pyproject.toml; the package only, never generated code.
typecheck: $(STAMP)
	$(BIN)/mypy

# STYLE.md's layers as import-linter contracts ([tool.importlinter] in pyproject.toml).
layers: $(STAMP)
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format django_grpc_bus tests example
	$(BIN)/ruff check --fix django_grpc_bus tests example

test: $(STAMP) tools lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The end-to-end tests again with every server on asyncio (rungrpcserver --asyncio,
# GrpcTestServer(asyncio=True)): DJANGO_GRPC_BUS_TEST_ASYNCIO=1, read by the test project.
test-asyncio: $(STAMP) tools
	DJANGO_GRPC_BUS_TEST_ASYNCIO=1 $(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

# sdist and wheel into dist/, checked by twine (build and twine come with the test extra, which
# tests/unit/test_packaging.py needs too).
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

# The documentation site (mkdocs.yml, docs/) into site/, with the docs extra. --strict: any
# warning (a broken link or anchor, a missing include, an unreadable docstring) fails it.
# NO_MKDOCS_2_WARNING silences Material's banner on its end of life (critical fixes until 2027-05).
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) .tools .pytest_cache .ruff_cache .mypy_cache .import_linter_cache .grimp_cache dist site
