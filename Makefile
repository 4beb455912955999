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
# (moto), the Iceberg REST catalog fixture's pyiceberg, and DuckDB with its Iceberg
# extension (the tables' second independent reader).
test-services:
	@python3 -c "import moto.server, pyiceberg.catalog.sql, sqlalchemy, pyarrow" 2>/dev/null || { \
		echo "installing the test object store and REST catalog (PyPI: moto, pyiceberg)"; \
		python3 -m pip install --quiet "moto[server]" "pyiceberg[sql-sqlite,pyarrow]"; }
	@python3 -c "import duckdb, duckdb_extension_iceberg, duckdb_extension_avro" 2>/dev/null || { \
		echo "installing DuckDB and its Iceberg extension, a second reader of the tables (PyPI)"; \
		python3 -m pip install --quiet "duckdb==1.5.5" "duckdb-extension-iceberg==1.5.5" "duckdb-extension-avro==1.5.5"; }

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
	$(CARGO) clippy --workspace --all-targets -- -D warnings
