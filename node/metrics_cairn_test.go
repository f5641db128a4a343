package node_test

import (
	"context"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/cairn-kv/cairn/node/nodetest"
)

// sum adds up every series of family name whose labels include labels
// (counters and gauges by value, histograms by count).
func sum(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	var total float64
	for _, m := range fams[name].GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range labels {
			match = match && got[k] == v
		}
		if !match {
			continue
		}
		total += m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
	}
	return total
}

// TestOracleAndForwardMetrics: in sharded mode with each range on one of
// two members, a put through the member that does not hold the key's range
// counts in that member's cairn_forwarded_requests_total{result=ok}, and
// the writes' revisions count in cairn_oracle_revisions_allocated_total and
// the member that is not the oracle's counts its round trips to it in
// cairn_oracle_round_trip_seconds.
func TestOracleAndForwardMetrics(t *testing.T) {
	c := nodetest.Start(t, 2, nodetest.Sharded("m"), nodetest.RangeReplicas(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const (
		forwarded  = "cairn_forwarded_requests_total"
		allocated  = "cairn_oracle_revisions_allocated_total"
		roundTrips = "cairn_oracle_round_trip_seconds"
	)
	scrapeAll := func() []map[string]*dto.MetricFamily {
		var out []map[string]*dto.MetricFamily
		for _, u := range c.URLs() {
			out = append(out, scrape(t, u+"/metrics"))
		}
		return out
	}
	total := func(fams []map[string]*dto.MetricFamily, name string) float64 {
		var s float64
		for _, f := range fams {
			s += sum(f, name, nil)
		}
		return s
	}
	before := scrapeAll()
	puts, remote := 0, 0
	for i, n := range c.Nodes() {
		for _, r := range n.Ranges() {
			key := r.Start
			if key == "" {
				key = "a"
			}
			if _, err := c.Client(i).Put(ctx, key, "v"); err != nil {
				t.Fatal(err)
			}
			puts++
			if !r.Remote {
				continue
			}
			remote++
			after := scrape(t, c.URLs()[i]+"/metrics")
			if d := sum(after, forwarded, map[string]string{"result": "ok"}) - sum(before[i], forwarded, map[string]string{"result": "ok"}); d < 1 {
				t.Errorf("member %d forwarded a put to range %d, which it does not hold: %s{result=ok} moved by %v", i, r.ID, forwarded, d)
			}
		}
	}
	if remote == 0 {
		t.Fatalf("no member lacks a range: %+v", c.Node(0).Ranges())
	}
	after := scrapeAll()
	if d := total(after, allocated) - total(before, allocated); d < float64(puts) {
		t.Errorf("%s moved by %v over the members after %d puts, want at least %d", allocated, d, puts, puts)
	}
	// The member that does not lead the placement group asks the oracle
	// over the network; the one that does, locally (no round trip).
	if d := total(after, roundTrips) - total(before, roundTrips); d < 1 {
		t.Errorf("%s counted %v round trips over the members, want at least 1", roundTrips, d)
	}
}
