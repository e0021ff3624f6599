# prober: the commands the README and docs/ promise. Run as root on Debian 12.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEBIAN_PACKAGES := systemd caddy dbus-daemon polkitd python3-venv util-linux curl time
# promtool for the fleet alert rules; the commands exec probes run under the hardened units
DEBIAN_PACKAGES += prometheus redis-server redis-tools postgresql-client procps
# The /metrics tests run promtool and a Prometheus server; the status page's, a browser.
DEBIAN_PACKAGES += chromium
# docs/operating.md's password-protected proxies for the page: caddy (above), nginx and htpasswd
DEBIAN_PACKAGES += nginx apache2-utils
# The container actuator's tests: podman serves the Docker API, runc runs a busybox image
DEBIAN_PACKAGES += podman runc busybox-static

# `make deb` and its tests: Debian's packaging tools, and pip to fetch the vendored wheels
DEBIAN_PACKAGES += build-essential debhelper dh-python python3-pip lintian

.PHONY: all deps venv test test-repeat lint demo bench screenshot deb clean


all: test

# System packages the tests and the demo drive for real (caddy, a system bus, polkit).
deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(PY): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	touch $(PY)

venv: $(PY)

# PYTEST_ARGS narrows a run, e.g. PYTEST_ARGS='-k test_docs'; CI runs it empty.
test: deps venv
	$(PY) -m pytest $(PYTEST_ARGS)

# The whole suite N times, each in a fresh clone of the committed HEAD, as CI runs it (.ci/run).
N ?= 3
test-repeat:
	PYTEST_ARGS="$(PYTEST_ARGS)" .ci/repeat $(N)

lint: venv
	$(VENV)/bin/ruff check prober tests tools examples/sidekiq-alive
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

demo: deps venv
	$(PY) -m tools.demo

bench: deps venv
	$(PY) -m tools.bench

# The picture in docs/operating.md of the status page, as headless Chromium draws it.
screenshot: deps venv
	$(PY) -m tools.screenshot docs/status-page.png

# prober_VERSION_all.deb in this folder (debian/build-deb says how; tests/test_deb.py checks it).
deb:
	debian/build-deb .

clean:
	rm -rf $(VENV) .sandbox .mypy_cache .ruff_cache .pytest_cache *.egg-info build prober_*.deb
