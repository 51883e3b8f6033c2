# blackhole-lab: `make reproduce` runs the article's experiment, `make test` runs the tests.
# Both start with `setup`, which is idempotent: it installs only what is missing.

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
LAB := $(VENV)/bin/lab
# defined before APT_PACKAGES: `:=` expands it where it is used
# the client zoo (load.driver "zoo"): each stack's runtime and library, from Debian; the
# Python ones come with the venv (extra "zoo"), mysql2 from npm into .zoo/node (below)
ZOO_APT_PACKAGES := default-jdk-headless libmariadb-java libhikaricp-java libslf4j-java \
  golang-go golang-github-go-sql-driver-mysql-dev php-cli php-mysql libmariadb-dev pkg-config \
  python3-dev
APT_PACKAGES := mariadb-server mariadb-client nftables python3-nftables tcpdump iproute2 conntrack procps sysbench nginx-light haproxy gcc libc6-dev docker.io debootstrap \
  qemu-system-x86 e2fsprogs vagrant chromium-headless-shell $(ZOO_APT_PACKAGES)
# a node that exists is reused (Debian's nodejs/npm can conflict with one installed otherwise)
NODE_APT_PACKAGES := $(shell command -v node >/dev/null && command -v npm >/dev/null || echo nodejs npm)
ZOO_NODE := .zoo/node
SCENARIO ?= scenarios/seed-lvs-mysql.toml
PYTEST_ARGS ?=

.PHONY: setup apt venv zoo reproduce test test-all vm-test lint bench clean

setup: apt venv zoo

apt:
	@missing=$$(for p in $(APT_PACKAGES) $(NODE_APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "setup: installing Debian packages:" $$missing; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null \
	    || { echo "setup: apt-get install failed (are you root? is the Debian mirror reachable?)"; exit 1; }; \
	fi

$(VENV)/.stamp-install: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip >/dev/null
	@$(PY) -m pip install -q -e '.[dev,zoo]'  # zoo: mysqlclient, built on libmariadb-dev (apt)
	@touch $@

# libnftables' Python binding is Debian's python3-nftables (the nftables project's own; not on
# PyPI): the venv gets a link to that one module, not all of Debian's dist-packages
NFT_BINDING := /usr/lib/python3/dist-packages/nftables
venv: $(VENV)/.stamp-install
	@site=$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	  [ -e "$$site/nftables" ] || ln -sfn $(NFT_BINDING) "$$site/nftables"

# mysql2 for the zoo's node-mysql2 stack, pinned by the committed lock file; nothing is
# fetched at run time
$(ZOO_NODE)/.stamp-install: lab/load/zoo/node/package.json lab/load/zoo/node/package-lock.json
	@mkdir -p $(ZOO_NODE)
	@cp lab/load/zoo/node/package.json lab/load/zoo/node/package-lock.json $(ZOO_NODE)/
	@cd $(ZOO_NODE) && npm ci --silent --no-audit --no-fund >/dev/null \
	  || { echo "setup: npm ci failed (is the npm registry reachable?)"; exit 1; }
	@touch $@

zoo: apt $(ZOO_NODE)/.stamp-install

reproduce: setup
	$(LAB) run $(SCENARIO)

test: setup
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# the lab inside a VM with a stock Debian kernel (real IPVS, netem): builds the image once,
# boots it (KVM where the host really has it, TCG otherwise), runs tests/vm inside
vm-test: setup
	$(LAB) vm test

test-all: setup
	$(VENV)/bin/pytest -m '' $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check lab tests benchmarks

bench: setup
	$(PY) benchmarks/bench_trial_setup.py
	$(PY) benchmarks/bench_matrix.py
	$(PY) benchmarks/bench_drivers.py
	$(PY) benchmarks/bench_cli.py

clean: venv
	$(LAB) clean
