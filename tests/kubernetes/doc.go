// Package kubernetes runs Kubernetes' own storage tests (k8s.io/apiserver's
// pkg/storage/etcd3 and pkg/storage/cacher, at the version this module's
// go.mod pins) unchanged against real server processes: etcd 3.7.3 (the
// baseline, which must pass), Cairn --single-group, Cairn's default mode,
// and Cairn with several ranges cut through the tests' keys.
//
// # The hook
//
// Those tests start an embedded etcd through one function,
// k8s.io/apiserver/pkg/storage/etcd3/testserver.RunEtcd. apiserver.patch
// adds a call at its top: when CAIRN_K8S_ENDPOINT is set, RunEtcd returns a
// client of that endpoint instead (wrapped in the same recorders), after
// emptying the server, and holds the server for the test until its cleanup
// (see the patch's external_server.go for the contract). The driver copies
// the module's source from the module cache into _work/apiserver (ignored by
// git), applies the patch with patch(1), and compiles the two packages'
// test binaries there with the module's own go.mod: nothing else changes.
//
// # The driver
//
// TestKubernetes has one subtest per server: etcd, single-group, default,
// ranges. Each builds its server, and for each of three passes starts a
// fresh server, waits for it to answer, runs one test binary against it and
// stops it: pkg/storage/etcd3 (all but two tests), the two etcd3 tests that
// need a 1 s watch progress notify interval (against a server started with
// it), and pkg/storage/cacher. A failed test fails the subtest unless it
// is a harness artefact (artefacts.go: tests that assume a brand-new etcd
// and fail against real etcd too through a shared server). Outputs and
// server logs are kept under _work/results/<mode>/.
//
//	cd tests/kubernetes && go test -run 'TestKubernetes/ranges' -timeout 60m ./...
//
// or `make test-kubernetes` (the ranges mode) and `make kubernetes-<mode>`
// at the repository root.
package kubernetes
