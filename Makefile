# The README's two commands: `make run` and `make test`.
GO ?= go

.PHONY: run build test test-unit test-compat

run:
	$(GO) run ./cmd/cairn

build:
	$(GO) build -o bin/cairn ./cmd/cairn

# Everything CI runs: the server module's tests, then the differential tests
# against embedded etcd (their own module, so the server stays lean).
test: test-unit test-compat

test-unit:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 15m ./...

test-compat:
	cd tests/compat && $(GO) test -count=1 -timeout 15m ./...
