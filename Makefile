# detserve: the two set-up commands are `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv constraints lint format test test-unit test-integration stack browser demo docs schemas clean bench bench-hash bench-eval bench-cli bench-download bench-verify bench-soak bench-runtime bench-gateway

# Versions come from constraints.txt, so that a fresh clone tests what was tested here.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# After a dependency change in pyproject.toml: resolve afresh and record the exact versions.
constraints:
	rm -rf $(VENV).constraints
	$(PYTHON) -m venv $(VENV).constraints
	$(VENV).constraints/bin/pip install --quiet -e '.[dev]'
	{ head -2 constraints.txt; $(VENV).constraints/bin/pip freeze --exclude-editable; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf $(VENV).constraints

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff format --check src tests scripts benchmarks
	$(BIN)/ruff check src tests scripts benchmarks
	$(BIN)/mypy
	$(BIN)/mypy benchmarks/*.py scripts/*.py scripts/stack/*.py

format: $(STAMP)
	$(BIN)/ruff format src tests scripts benchmarks
	$(BIN)/ruff check --fix src tests scripts benchmarks

# The runtime stack: Docker engine, local registry, base image and vLLM CPU image (idempotent).
stack: $(STAMP)
	$(BIN)/python scripts/stack/stack.py all

# Debian's headless Chromium, for the screenshot tests of `detserve check`'s report.html and of the
# documentation site.
browser:
	command -v chromium >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test-unit: $(STAMP) browser
	$(BIN)/pytest tests/unit

test-integration: stack
	$(BIN)/pytest tests/integration

test: stack browser
	$(BIN)/pytest tests

demo: stack
	bash scripts/demo.sh

# The benchmarks of docs/performance.md through one tool, benchmarks/bench.py; each writes its
# record to benchmarks/results/ and exits 0 when its targets are met, 1 when one is missed, 2 when
# it could not run. `make bench` runs every part (the soak alone takes an hour) and writes one
# combined record; each part takes the options of its own target below.
bench: stack
	$(BIN)/python benchmarks/bench.py all --hash-args="$(BENCH_HASH_ARGS)" \
		--eval-args="$(BENCH_EVAL_ARGS)" --cli-args="$(BENCH_CLI_ARGS)" \
		--download-args="$(BENCH_DOWNLOAD_ARGS)" --verify-args="$(BENCH_VERIFY_ARGS)" \
		--soak-args="$(BENCH_SOAK_ARGS)" \
		--runtime-args="$(BENCH_RUNTIME_ARGS)" --concurrency-args="$(BENCH_CONCURRENCY_ARGS)" \
		--gateway-args="$(BENCH_GATEWAY_ARGS)" \
		--gateway-hostile-args="$(BENCH_GATEWAY_HOSTILE_ARGS)" \
		--placement-args="$(BENCH_PLACEMENT_ARGS)"

# Verification throughput against this machine's limits, warm and cold; exit 1 below target.
# Options: make bench-hash BENCH_HASH_ARGS="--total-gib 1 --shards 1" (docs/performance.md).
bench-hash: $(STAMP)
	$(BIN)/python benchmarks/bench.py hash $(BENCH_HASH_ARGS)

# eval-determinism on two synthetic 100,000-sample run logs: time and peak memory; exit 1 above
# target. Options: make bench-eval BENCH_EVAL_ARGS="--samples 20000 --repeat 3".
bench-eval: $(STAMP)
	$(BIN)/python benchmarks/bench.py eval $(BENCH_EVAL_ARGS)

# sample's verification beyond the container lifetime's first full pass, on a 20 GiB synthetic
# snapshot (written under /var/tmp, removed at the end); exit 1 above 1 s or when a change is not
# caught. Options: make bench-verify BENCH_VERIFY_ARGS="--total-gib 1 --rounds 2".
bench-verify: $(STAMP)
	$(BIN)/python benchmarks/bench.py verify $(BENCH_VERIFY_ARGS)

# The gateway's re-verification with serve's defaults over a one-hour soak on the same snapshot:
# share of a core and of the disk, and how soon a change is caught; exit 1 above 5 % of a core.
# Options: make bench-soak BENCH_SOAK_ARGS="--duration 600".
bench-soak: $(STAMP)
	$(BIN)/python benchmarks/bench.py soak $(BENCH_SOAK_ARGS)

# Start-up: --version, --help and verify of the tiny model against `python -c pass`, with hyperfine
# (apt-get installs it when missing; exit 2 when it cannot). Exit 1 above target.
# Options: make bench-cli BENCH_CLI_ARGS="--runs 50".
bench-cli: $(STAMP)
	$(BIN)/python benchmarks/bench.py cli $(BENCH_CLI_ARGS)

# `detserve download` of a 1 GiB synthetic model from olah (a real hub server, offline on loopback)
# against huggingface_hub's snapshot_download of the same files: wall time at most 1.5x, peak memory
# under 200 MB, progress shown; exit 1 when missed.
# Options: make bench-download BENCH_DOWNLOAD_ARGS="--total-gib 0.25 --rounds 1".
bench-download: $(STAMP)
	$(BIN)/python benchmarks/bench.py download $(BENCH_DOWNLOAD_ARGS)

# Sampling overhead and time to ready on the tiny CPU container against the bare server; exit 1
# below target. Options: make bench-runtime BENCH_RUNTIME_ARGS="--rounds 4 --ready-rounds 1".
# Then certified sampling at concurrency 1..32, side by side, logs compared (bench_concurrency.py;
# BENCH_CONCURRENCY_ARGS="--rounds 1"); exit 1 below 8x or on any log that differs.
# Then the gateway against the bare server at concurrency 1, side by side (bench_gateway.py;
# BENCH_GATEWAY_ARGS="--rounds 2"): requests/s, p50/p99; exit 1 when p50 is over 5 % above.
# Then CPU placement chosen per workload against the unplaced server (bench_placement.py;
# BENCH_PLACEMENT_ARGS="--rounds 2"): exit 1 when concurrency 1 is over 3 % slower than
# unplaced, 32 under 8x, or a log differs.
bench-runtime: stack
	status=0; \
	$(BIN)/python benchmarks/bench.py runtime $(BENCH_RUNTIME_ARGS) || status=$$?; \
	$(BIN)/python benchmarks/bench.py concurrency $(BENCH_CONCURRENCY_ARGS) || status=$$?; \
	$(BIN)/python benchmarks/bench.py gateway $(BENCH_GATEWAY_ARGS) || status=$$?; \
	$(BIN)/python benchmarks/bench.py placement $(BENCH_PLACEMENT_ARGS) || status=$$?; \
	exit $$status

# /health of `detserve serve` in front of the tiny CPU container, alone and then while 100 idle and
# 100 half-sent connections are held and a ~12 KB hostile grammar and a JSON schema with a
# catastrophic regex pattern are sent again and again (bench_gateway_hostile.py): p50, p99, max;
# exit 1 when the max under that load is over 100 ms.
# Options: make bench-gateway BENCH_GATEWAY_HOSTILE_ARGS="--probes 200 --hostile regex".
bench-gateway: stack
	$(BIN)/python benchmarks/bench.py gateway-hostile $(BENCH_GATEWAY_HOSTILE_ARGS)

# The documentation site, from docs/ and mkdocs.yml into site/: strict, so a broken link or anchor
# fails (tests/unit/test_docs_site.py builds it the same way in `make test`). Offline: nothing is
# fetched. NO_MKDOCS_2_WARNING silences Material's notice about its end of life, printed each build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The generated files: the schemas, the Python and command-line references, the gateway's OpenAPI
# document, and README.md (the site's landing page, docs/index.md, with its links into docs/).
# Tests require each to be current.
schemas: $(STAMP)
	$(BIN)/detserve config schema > docs/profile.schema.json
	$(BIN)/python -m detserve.runlog > src/detserve/schemas/run-log.schema.json
	$(BIN)/python scripts/api_reference.py docs/python-api.md
	$(BIN)/python scripts/cli_reference.py docs/reference/cli.md
	$(BIN)/python scripts/openapi_document.py docs/reference/gateway-openapi.json
	$(BIN)/python scripts/readme_from_landing.py README.md

clean:
	rm -rf $(VENV) build dist site .pytest_cache .mypy_cache .ruff_cache
