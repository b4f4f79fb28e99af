# The only entry point: install, proto, run, test, bench, lint.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PROTOS := $(wildcard proto/mailblast/v1/*.proto)
GEN_STAMP := gen/.stamp

.PHONY: install proto run test test-fast bench bench-import bench-copies lint format clean browser run-%

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "mailblast needs Python 3.11; set PYTHON=python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# generated protobuf code lives in gen/, outside the source tree: put it on the venv's path
	echo "$(CURDIR)/gen" > $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/mailblast-gen.pth
	touch $@

proto: $(GEN_STAMP)

$(GEN_STAMP): $(PROTOS) $(VENV)/.installed
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -Iproto --python_out=gen --grpc_python_out=gen --pyi_out=gen $(PROTOS)
	touch $@

run: install proto
	$(PY) -m dev.run

run-%: install proto
	$(PY) -m services.$*

test: install proto browser
	$(PY) -m ruff check .
	$(PY) -m pytest -q -p no:cacheprovider

# The console's browser tests drive Debian's chromium through Playwright (browser downloads are not
# possible): as root (CI) install it when missing; otherwise say what to install.
browser:
	@# Debian's chromium for the browser tests, and libatomic1 for Playwright's bundled node driver
	@missing=""; [ -x /usr/bin/chromium ] || missing="chromium"; \
	/sbin/ldconfig -p | grep -q 'libatomic.so.1 ' || missing="$$missing libatomic1"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "the browser tests need Debian packages: sudo apt-get install -y $$missing" >&2; exit 1; fi

bench: install proto
	$(PY) -m bench.send

bench-import: install proto
	$(PY) -m bench.import_csv

bench-copies: install proto
	$(PY) -m bench.sender_copies $(ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf gen $(VENV)
