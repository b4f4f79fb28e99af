# The only entry point: install, proto, run, test, bench, lint.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROTOS := $(wildcard proto/mailblast/v1/*.proto)
GEN_STAMP := gen/.stamp
K8S_SCHEMAS := deploy/k8s/schemas/node_modules/.package-lock.json
CHECKOV := .venv-checkov/bin/checkov

.PHONY: install proto proto-check proto-release run test test-fast bench bench-import bench-copies chaos bench-bounces lint format docs clean test-deps test-tools lock audit run-%

install: $(VENV)/.installed

# What only the tests use beyond the virtualenv: the k8s schema checker (Node.js) and checkov.
test-tools: $(K8S_SCHEMAS) $(CHECKOV)

# Exactly the tested versions: every file is checked against its hash in requirements.lock (make lock).
$(VENV)/.installed: requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "mailblast needs Python 3.11; set PYTHON=python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --require-hashes --no-deps -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	# generated protobuf code lives in gen/, outside the source tree: put it on the venv's path
	echo "$(CURDIR)/gen" > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/mailblast-gen.pth
	touch $@

# The schemas the k8s tests check the custom resources against (KEDA, CloudNativePG, cert-manager,
# prometheus-operator): npm packages, exactly as deploy/k8s/schemas/package-lock.json pins them (with
# their integrity hashes).
$(K8S_SCHEMAS): deploy/k8s/schemas/package-lock.json | test-deps
	npm ci --prefix deploy/k8s/schemas --ignore-scripts --no-audit --no-fund --loglevel=error

# checkov (the k8s tests' manifest scanner) pins its dependencies too tightly to share the project's
# virtualenv: it has its own, installed exactly as deploy/k8s/checkov.lock pins it (with hashes).
$(CHECKOV): deploy/k8s/checkov.lock
	test -x .venv-checkov/bin/python || $(PYTHON) -m venv .venv-checkov
	.venv-checkov/bin/python -m pip install -q --require-hashes --no-deps -r deploy/k8s/checkov.lock
	touch $@

proto: $(GEN_STAMP)

$(GEN_STAMP): $(PROTOS) $(VENV)/.installed
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iproto --python_out=gen --grpc_python_out=gen --pyi_out=gen $(PROTOS)
	touch $@

# The contracts: buf.yaml's lint rules, and no change a peer of the last release could not read
# (proto/released.binpb, the contracts as last released; see DEVELOPERS.md, "Contracts").
proto-check: install
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf breaking --against proto/released.binpb

# At a release: the contracts as released become the baseline later changes are checked against.
proto-release: install
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf build --exclude-source-info -o proto/released.binpb

run: install proto
	$(PY) -m dev.run

run-%: install proto
	$(PY) -m services.$*

# bandit reads the shipped code (not the tests) and fails on any finding of medium severity or above;
# each one that is not a flaw is explained beside its `# nosec`.
test: install proto test-deps test-tools proto-check
	$(PY) -m ruff check .
	$(PY) -m bandit -q -r services cli dev bench --severity-level medium
	$(PY) -m pytest -q -p no:cacheprovider

# Debian packages the tests use (browser downloads are not possible): as root (CI) install the missing ones;
# otherwise say what to install. chromium for the console's browser tests through Playwright, libatomic1 for
# Playwright's bundled node driver; Mail::DKIM (rsa-sha256) and OpenDKIM's library (ed25519-sha256), the
# independent DKIM verifiers of tests/support/dkim_verify.py; Node.js and npm for the k8s schema checker;
# fonts-noto-cjk so the console's screenshots show Japanese text as a Japanese user sees it.
test-deps:
	@missing=""; [ -x /usr/bin/chromium ] || missing="chromium"; \
	[ -e /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ] || missing="$$missing fonts-noto-cjk"; \
	/sbin/ldconfig -p | grep -q 'libatomic.so.1 ' || missing="$$missing libatomic1"; \
	perl -MMail::DKIM::Verifier -e 1 2>/dev/null || missing="$$missing libmail-dkim-perl"; \
	/sbin/ldconfig -p | grep -q 'libopendkim.so.11 ' || missing="$$missing libopendkim11"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "the tests need Debian packages: sudo apt-get install -y $$missing" >&2; exit 1; fi

bench: install proto test-deps
	$(PY) -m bench.send $(ARGS)

bench-import: install proto
	$(PY) -m bench.import_csv

bench-copies: install proto
	$(PY) -m bench.sender_copies $(ARGS)

# Faults during a campaign (senders killed, NATS killed, PostgreSQL restarted, a deferring sink, all at
# once): what arrived, what was lost, how long recovery took. A benchmark on loopback, not a test.
chaos: install proto
	$(PY) -m bench.chaos $(ARGS)

# The bounce classifier against a labelled corpus: CORPUS=folder with labels.jsonl (default: shared/, else the tests' copy).
bench-bounces: install proto
	$(PY) -m bench.bounces $(CORPUS) $(ARGS)

# After changing dependencies in pyproject.toml: pin every package (and its hashes) again.
lock: install test-tools
	$(PY) -m piptools compile -q --generate-hashes --allow-unsafe --extra test --strip-extras \
		--no-emit-index-url --no-emit-find-links -o requirements.lock pyproject.toml
	$(PY) -m piptools compile -q --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links -o deploy/k8s/checkov.lock deploy/k8s/checkov.in

# The locked packages against the Python advisory database. It needs the network to reach that database;
# --strict makes an unreachable database a failure, never a clean report of packages it could not check.
audit: install test-tools
	$(PY) -m pip_audit --strict --require-hashes --disable-pip --progress-spinner off -r requirements.lock
	$(PY) -m pip_audit --strict --require-hashes --disable-pip --progress-spinner off -r deploy/k8s/checkov.lock

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# DEVELOPERS.md's settings table, written from the settings' declarations.
docs: install proto
	$(PY) -m dev.docs

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf gen $(VENV) .venv-checkov deploy/k8s/schemas/node_modules
