# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-faults lint bench peer bench-peer clean chromium nftables

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/tessera demo --out runs/demo

# Branch coverage of the in-process tests; fails under [tool.coverage.report]
# fail_under. `.venv/bin/coverage report` lists the files below 100% afterwards.
test: $(STAMP) chromium
	$(BIN)/pytest -n 2 --dist loadgroup --cov --cov-report=

# The fault group (pytest -m faults): real deployments stopped, killed and resumed.
# Slower than the default suite, so apart from it; CI runs both.
test-faults: $(STAMP) nftables
	$(BIN)/pytest -m faults -n 2 --dist loadgroup --no-cov

# The network fault tests (tests/e2e/test_faults_network.py) drop frames with nftables:
# installed here where it is missing and we are root; otherwise they skip, saying why.
nftables:
	@command -v nft >/dev/null || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null; } \
		|| echo "make nftables: no nft and cannot install it; the network fault tests will skip"

# The browser tests (tests/browser) drive Debian's chromium: installed here where it is
# missing and we are root; otherwise they skip, saying why (and fail under CI=true).
chromium:
	@command -v chromium >/dev/null || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "make chromium: no chromium and cannot install it; the browser tests will skip"

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/plaintext_rounds.py
	$(BIN)/python benchmarks/secure_rounds.py --quick
	$(BIN)/python benchmarks/batched_training.py
	$(BIN)/python benchmarks/crypto_throughput.py

# The peer benchmark's Flower side lives in its own venv: Flower's pins (typer,
# rich, fastapi, uvicorn) conflict with Tessera's. benchmarks/peer_flower.py
# runs Tessera here and Flower there (benchmarks/peer/flower_side.py).
PEER := .venv-peer
PEER_STAMP := $(PEER)/.installed

$(PEER_STAMP): benchmarks/peer/requirements.txt
	test -x $(PEER)/bin/python || $(PY) -m venv $(PEER)
	$(PEER)/bin/pip install --quiet --upgrade pip
	$(PEER)/bin/pip install --quiet -r benchmarks/peer/requirements.txt
	touch $(PEER_STAMP)

peer: $(STAMP) $(PEER_STAMP)

bench-peer: peer
	$(BIN)/python benchmarks/peer_flower.py

clean:
	rm -rf $(VENV) $(PEER) runs .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
