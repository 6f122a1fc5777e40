# Developer and CI entry points. `make test` installs what the tests need.

PYTHON ?= python3
VENV := .venv
# Rewritten whenever pyproject.toml changes, so `make venv` reinstalls only then.
VENV_STAMP := $(VENV)/.installed
PG_BIN := /usr/lib/postgresql/15/bin
PGBOUNCER := /usr/sbin/pgbouncer
PYTEST_ARGS ?=
LINT_PATHS := $(wildcard rotating_pool tests examples benchmarks deploy .ci/matrix.py mkdocs_hooks.py)
# The rotation Lambda's runtime and architecture (deploy/rotation.yaml names the same).
LAMBDA_PYTHON ?= 3.12
LAMBDA_ARCH ?= x86_64

.PHONY: venv postgres pgbouncer test lint docs lint-templates lambda-zip dist matrix demo demo-threads bench bench-quick bench-fleet-sim mutation

venv: $(VENV_STAMP)

# $(call apt_install,FILE,PACKAGE): install Debian's PACKAGE unless FILE exists
# (as root, or through sudo).
define apt_install
if [ -x $(1) ]; then exit 0; fi; \
if [ "$$(id -u)" = 0 ]; then SUDO=; \
elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
else echo "$(1) is missing: install Debian's $(2) package" \
     "(apt-get install $(2)) as root." >&2; \
     exit 1; fi; \
$$SUDO apt-get update && \
$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(2)
endef

$(VENV_STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $@

# The tests run a throwaway PostgreSQL 15 from Debian's server packages.
postgres:
	@$(call apt_install,$(PG_BIN)/postgres,postgresql-15)

# And a PgBouncer from Debian's package in front of it (tests/test_stacks*.py).
pgbouncer:
	@$(call apt_install,$(PGBOUNCER),pgbouncer)

test: venv postgres pgbouncer
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: venv lint-templates
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy

# CloudFormation templates against CloudFormation's schemas (SAM ones too).
lint-templates: venv
	$(VENV)/bin/cfn-lint deploy/*.yaml

# The rotation function's zip: dist/lambda/rotation-py$(LAMBDA_PYTHON)-$(LAMBDA_ARCH).zip.
lambda-zip: venv
	$(VENV)/bin/python deploy/build_lambda_zip.py --python $(LAMBDA_PYTHON) --arch $(LAMBDA_ARCH)

# The release files: wheel and sdist in dist/, checked by twine.
dist: venv
	rm -f dist/rotating_pool-*.whl dist/rotating_pool-*.tar.gz
	$(VENV)/bin/python -m build --outdir dist .
	$(VENV)/bin/twine check --strict dist/rotating_pool-*.whl dist/rotating_pool-*.tar.gz

# Every Python the package declares, in fresh venvs; the lowest at the dependency floors.
matrix: venv postgres
	$(VENV)/bin/python .ci/matrix.py

# The README's main command: the Fargate task (app + agent sidecar) played locally.
demo: venv postgres
	$(VENV)/bin/python -m examples.fargate_sidecar.run_local

# The smaller demo: writer threads through create_engine, both strategies.
demo-threads: venv postgres
	$(VENV)/bin/python -m examples.demo

DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): $(VENV_STAMP)
	$(VENV)/bin/python -m pip install --quiet -e '.[test,docs]'
	touch $@

# The documentation site (mkdocs.yml, docs/) into site/; a broken link or reference fails it.
docs: $(DOCS_STAMP)
	$(VENV)/bin/mkdocs build --strict --site-dir site

BENCH_STAMP := $(VENV)/.installed-bench

$(BENCH_STAMP): $(VENV_STAMP)
	$(VENV)/bin/python -m pip install --quiet -e '.[test,bench]'
	touch $@

# Benchmarks against the baseline and the peers (benchmarks/README.md): about 12 minutes.
bench: $(BENCH_STAMP) postgres
	$(VENV)/bin/python -m benchmarks.run

# The same, briefly: only checks that every benchmark runs (CI); about 2 minutes.
bench-quick: $(BENCH_STAMP) postgres
	$(VENV)/bin/python -m benchmarks.run --quick
	$(VENV)/bin/python -m benchmarks.fleet_sim --quick
	$(VENV)/bin/python -m benchmarks.hook_cost --connects 20

# The fleet simulator's sweep (benchmarks/README.md, "Fleet simulator"); no database needed.
bench-fleet-sim: $(BENCH_STAMP)
	$(VENV)/bin/python -m benchmarks.fleet_sim

MUTATION_STAMP := $(VENV)/.installed-mutation

$(MUTATION_STAMP): $(VENV_STAMP)
	$(VENV)/bin/python -m pip install --quiet -e '.[test,mutation]'
	touch $@

# Mutation testing of the sans-I/O core (rotating_pool/core/) against its fast
# pure tests ([tool.mutmut] in pyproject.toml): about 2 minutes; not in CI's run.
# Prints the score and every mutant that no test killed (`mutmut show NAME`).
mutation: $(MUTATION_STAMP)
	rm -rf mutants
	$(VENV)/bin/mutmut run --max-children 2 > /dev/null 2>&1 || true
	$(VENV)/bin/mutmut export-cicd-stats > /dev/null
	$(VENV)/bin/python -c "import json; s = json.load(open('mutants/mutmut-cicd-stats.json')); \
	caught = s['killed'] + s['timeout']; \
	print(f\"mutation score: {caught}/{s['total']} caught ({100 * caught / s['total']:.1f}%:\", \
	f\"{s['killed']} failed a test, {s['timeout']} hung one),\", \
	f\"{s['survived']} survived, {s['no_tests']} not covered\")"
	$(VENV)/bin/mutmut results
