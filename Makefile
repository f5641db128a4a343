# The README's two commands: `make run` and `make test`.
GO ?= go

.PHONY: run build etcdctl test test-long test-unit test-compat test-bench test-bench-smoke test-robustness soak fuzz \
	test-kubernetes kubernetes-etcd kubernetes-single-group kubernetes-default kubernetes-ranges kubernetes-all

# One node on 127.0.0.1:2379, data in ./default.cairn, in sharded mode (the
# default) with one range; the README says what --single-group changes.
run:
	$(GO) run ./cmd/cairn

build:
	$(GO) build -o bin/cairn ./cmd/cairn

# etcd's client, at the version tests/compat pins, into bin/.
etcdctl:
	cd tests/compat && $(GO) build -o ../../bin/etcdctl go.etcd.io/etcd/etcdctl/v3

# Everything CI runs: the server module's tests, then the differential tests
# against embedded etcd (their own module, so the server stays lean), the
# robustness short profile, Kubernetes' storage tests against Cairn with six
# ranges, and the benchmark harness's unit tests (its smoke run, five minutes
# of servers, is test-bench-smoke, outside CI so CI stays near twenty minutes).
test: test-unit test-compat test-robustness test-kubernetes test-bench

# gotest runs go test with the arguments $(2) through gotestsum (pinned in
# .ci/tools/go.mod, its own module), whose output is go test's, then lists
# the tests of that run slower than SLOWEST (the JSON is kept in
# .test-times/$(1).json), so that a CI log shows where the suite's time goes.
SLOWEST ?= 10s
GOTESTSUM = $(GO) tool -modfile=$(CURDIR)/.ci/tools/go.mod gotestsum
define gotest
mkdir -p $(CURDIR)/.test-times && \
	$(GOTESTSUM) --format standard-quiet --jsonfile $(CURDIR)/.test-times/$(1).json -- $(2); status=$$?; \
	echo "tests of $(1) slower than $(SLOWEST):"; \
	$(GOTESTSUM) tool slowest --jsonfile $(CURDIR)/.test-times/$(1).json --threshold $(SLOWEST); \
	exit $$status
endef

# TESTTAGS are build tags for test-unit and test-compat. cairn_long (one
# tag for the whole repository) gives the seeded differential tests their
# full counts of sequences; test-long is make test with it.
TESTTAGS ?=
test-long:
	$(MAKE) test TESTTAGS=cairn_long

# -parallel 4: the few node tests that call t.Parallel mostly wait (for a
# client's keepalive timer, a request timeout), so they overlap one another
# on two cores rather than queue behind GOMAXPROCS.
test-unit:
	$(GO) vet ./...
	$(call gotest,unit,-count=1 -timeout 15m -parallel 4 -tags '$(TESTTAGS)' ./...)

test-compat:
	cd tests/compat && $(call gotest,compat,-count=1 -timeout 15m -tags '$(TESTTAGS)' ./...)

# The robustness suite (its own module): the short profile of faults under
# etcd's traffic, checked with etcd's model; then the checker's self tests,
# which must catch a cairn built with a planted bug: stale reads (TestPlantedBug,
# TestPlantedBugSharded), one participant of a cross-range txn committed at
# another revision (TestPlantedTxnRevision), a closed revision passing a
# prepared write (TestPlantedClosedPass). Each test builds cairn with its own
# tag alone; the tags here only select the test files.
PLANTED_TAGS = cairn_planted_stale_reads,cairn_planted_txn_revision,cairn_planted_closed_pass
test-robustness:
	cd tests/robustness && $(GO) vet ./...
	cd tests/robustness && $(GO) vet -tags $(PLANTED_TAGS) ./...
	cd tests/robustness && $(call gotest,robustness,-count=1 -timeout 15m ./...)
	cd tests/robustness && $(GO) test -count=1 -tags $(PLANTED_TAGS) -run '^TestPlanted' ./...

# Kubernetes' own storage tests (k8s.io/apiserver's pkg/storage/etcd3 and
# pkg/storage/cacher, unchanged but for a hook where they start etcd) against
# a server process (its own module; tests/kubernetes/README.md): one target
# per server. test-kubernetes is the run meant for CI: Cairn with six ranges
# cut through the tests' keys.
test-kubernetes: kubernetes-ranges
kubernetes-etcd kubernetes-single-group kubernetes-default kubernetes-ranges:
	cd tests/kubernetes && $(GO) vet ./... && $(GO) test -count=1 -timeout 60m -v -run 'TestKubernetes/^$(patsubst kubernetes-%,%,$@)$$' ./...
kubernetes-all:
	cd tests/kubernetes && $(GO) vet ./... && $(GO) test -count=1 -timeout 120m -v -run 'TestKubernetes' ./...

# The long soak: random scenarios for SOAK (default 30m).
SOAK ?= 30m
soak:
	cd tests/robustness && $(GO) test -count=1 -timeout 0 -run TestSoak -robustness.soak=$(SOAK) -v ./...

# Each fuzz target for FUZZTIME (go test runs one -fuzz target at a time).
FUZZTIME ?= 3m
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzCommand$$' -fuzztime $(FUZZTIME) ./shard/
	for f in FuzzRange FuzzPut FuzzTxn FuzzWatchCreate; do \
		$(GO) test -run '^$$' -fuzz "^$$f\$$" -fuzztime $(FUZZTIME) ./node/ || exit 1; \
	done

# The benchmark harness (its own module): its unit tests (in CI), then, in
# test-bench-smoke, one round with tiny totals against etcd, Cairn and the
# ceiling, so that it cannot rot. The report goes to a temporary directory.
test-bench:
	cd bench && $(GO) vet ./... && $(GO) test -count=1 ./...

test-bench-smoke: test-bench
	d=$$(mktemp -d) && (cd bench && $(GO) run . -smoke -out $$d/results && $(GO) run . watch-scale -smoke -out $$d/results && $(GO) run . leases -smoke -out $$d/results); rc=$$?; rm -rf $$d; exit $$rc
