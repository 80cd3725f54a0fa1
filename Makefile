# vmrt — every target runs from a fresh checkout after `make setup`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PYTEST  := $(VENV)/bin/pytest
APT_PACKAGES := qemu-system-x86 qemu-utils busybox-static crun runc conmon podman containerd \
	containernetworking-plugins erofs-utils cpio lz4 python3-venv python3-dev iproute2 \
	util-linux bc flex bison libelf-dev libssl-dev libc6-dev xz-utils make gcc tar dpkg

.PHONY: setup apt venv image demo test test-unit test-vm test-compat lint bench bench-quick soak clean sync-protocol

setup: apt venv image

apt:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PACKAGES); fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	/usr/bin/python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

image: venv
	$(VENV)/bin/vmrt image build

# The main job: a busybox container in a pod VM, on built-in defaults.
demo: setup
	$(PY) -m vmrt.demo

test: setup
	$(PYTEST) -q -ra tests

test-unit: venv
	$(PYTEST) -q tests/unit tests/lint

test-vm: setup
	$(PYTEST) -q -ra -m vm tests

test-compat: setup
	$(PYTEST) -q -ra -m compat tests

lint: venv
	$(VENV)/bin/ruff check src guest-agent tests bench
	$(VENV)/bin/mypy

sync-protocol:
	cp src/vmrt/protocol.py guest-agent/vmrt_agent/protocol.py

bench: setup
	$(PY) bench/run.py --full

bench-quick: setup
	$(PY) bench/run.py --quick

# 1000 mixed lifecycle operations with random SIGKILLs, then every leak counted.
soak: setup
	$(PY) bench/soak.py --ops 1000

clean:
	rm -rf $(VENV) build *.egg-info bench/results
