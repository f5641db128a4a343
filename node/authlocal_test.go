package node_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/cairn-kv/cairn/node/nodetest"
)

// internalReads is grpc_server_handled_total of the node-to-node service's
// Read, every code.
func internalReads(fams map[string]*dto.MetricFamily) float64 {
	var n float64
	for _, m := range fams["grpc_server_handled_total"].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["grpc_service"] == "cairn.internal.v1.Node" && labels["grpc_method"] == "Read" {
			n += m.GetCounter().GetValue()
		}
	}
	return n
}

// TestAuthOffNoRemoteReads: with auth never enabled, client requests
// through a member without a replica of range 1 (where the auth state
// lives) cost no remote read of it: in steady state the members serve at
// most a read or two per DefaultAuthCacheAge between them, not one per
// request.
func TestAuthOffNoRemoteReads(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cl := nodetest.Start(t, 4, nodetest.Sharded(subsetSplits...), nodetest.RangeReplicas(3), nodetest.PlacementReplicas(3))
	ones := holders(t, cl, 1)
	m := -1
	for i := range cl.Size() {
		if !slices.Contains(ones, i) {
			m = i
			break
		}
	}
	if m < 0 {
		t.Fatalf("every member holds range 1: %v", ones)
	}
	keys := append([]string{"a1"}, subsetSplits...)
	c := cl.Client(m)
	for _, k := range keys { // warm up: routes, leaders, the cache
		if _, err := c.Put(ctx, k, "x"); err != nil {
			t.Fatal(err)
		}
	}
	reads := func() float64 {
		var n float64
		for _, u := range cl.URLs() {
			n += internalReads(scrape(t, u+"/metrics"))
		}
		return n
	}
	before := reads()
	start := time.Now()
	const rounds = 20
	for i := range rounds {
		for _, k := range keys {
			if _, err := c.Put(ctx, k, fmt.Sprint(i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	elapsed := time.Since(start)
	d := reads() - before
	t.Logf("%d puts through member %d (no replica of range 1) in %v: %v Node.Read calls served", rounds*len(keys), m, elapsed.Round(time.Millisecond), d)
	if limit := float64(elapsed/time.Second) + 2; d > limit {
		t.Fatalf("%d puts through member %d in %v made %v remote reads, want at most %v", rounds*len(keys), m, elapsed, d, limit)
	}
}
