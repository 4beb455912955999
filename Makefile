# The two commands of the README: `make demo` and `make test`.

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test prerequisites build check

# Installs etcd and protoc where apt-get is available and they are missing.
prerequisites:
	@missing=""; \
	command -v protoc >/dev/null || missing="$$missing protobuf-compiler"; \
	command -v etcd >/dev/null || missing="$$missing etcd-server"; \
	if [ -n "$$missing" ]; then \
		if command -v apt-get >/dev/null; then \
			echo "installing:$$missing"; \
			$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $$missing; \
		else \
			echo "please install:$$missing (protoc and etcd)"; exit 1; \
		fi; \
	fi

# Builds the three binaries and runs the demo: a local cluster, a stream, ten batches.
demo: prerequisites
	$(CARGO) build --release --bins
	./target/release/sluice demo

# Builds every binary (integration tests start them as processes), runs every test, and
# renders and validates the Helm chart offline.
test: prerequisites
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace -- --test-threads=2
	deploy/k8s/validate.sh

check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets
