# Entry points. `make demo` shows the shipper working against a local LocalStack; `make test` runs
# every test (unit, property, LocalStack integration, crash, chart and Dockerfile lint).

.PHONY: all build release demo test test-unit lint localstack-up localstack-down bench bench-parse clean

all: build

build:
	cargo build

release:
	cargo build --release

demo:
	scripts/demo.sh

test:
	scripts/test.sh

test-unit:
	cargo test --lib

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

localstack-up:
	localstack/start.sh

localstack-down:
	localstack/stop.sh

bench:
	scripts/bench.sh

bench-parse:
	scripts/bench_parse.py

clean:
	cargo clean
