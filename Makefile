# The two commands of the README: `make demo` and `make test`.

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test prerequisites test-services check

# Installs etcd, protoc and OpenSSL's headers (librdkafka is built with TLS) where apt-get
# is available and they are missing.
prerequisites:
	@missing=""; \
	command -v protoc >/dev/null || missing="$$missing protobuf-compiler"; \
	command -v etcd >/dev/null || missing="$$missing etcd-server"; \
	pkg-config --exists openssl 2>/dev/null || missing="$$missing libssl-dev pkg-config"; \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null; then \
			echo "installing:$$missing"; \
			$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
		else \
			echo "please install:$$missing (protoc, etcd, OpenSSL headers)"; exit 1; \
		fi; \
	fi

# Installs the Python services the tests start when missing: an S3-compatible object store
# (moto) and the Iceberg REST catalog fixture's pyiceberg.
test-services:
	@python3 -c "import moto.server, pyiceberg.catalog.sql, sqlalchemy" 2>/dev/null || { \
		echo "installing the test object store and REST catalog (PyPI: moto, pyiceberg)"; \
		python3 -m pip install --quiet "moto[server]" "pyiceberg[sql-sqlite]"; }

# Builds the three binaries and runs the demo: a local cluster, a stream, ten batches.
# A debug build (about 10 minutes cold on 2 cores, shared with `make test`); for the
# fastest batches use `cargo build --release --bins && ./target/release/sluice demo`.
demo: prerequisites
	$(CARGO) build --bins
	./target/debug/sluice demo

# Builds every binary (integration tests start them as processes), runs every test, and
# renders and validates the Helm chart offline.
test: prerequisites test-services
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace -- --test-threads=2
	deploy/k8s/validate.sh

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets
