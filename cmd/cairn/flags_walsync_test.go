package main

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/cairn-kv/cairn/node/testport"
)

// TestRaftLogSyncMetricsBinary: the cairn binary times its raft log's
// fsyncs (etcd_disk_wal_fsync_duration_seconds counts one or more per
// write) unless started with --raft-log-sync-metrics=false, where the
// count stays 0 after the same writes: the switch a benchmark uses to
// measure the timing hook's cost does take the hook away.
func TestRaftLogSyncMetricsBinary(t *testing.T) {
	const writes = 5
	for _, tc := range []struct {
		name  string
		flags []string
		timed bool
	}{
		{"default", nil, true},
		{"off", []string{"--raft-log-sync-metrics=false"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			endpoint := fmt.Sprintf("http://127.0.0.1:%d", testport.Port(t))
			args := append([]string{"--single-group", "--data-dir", filepath.Join(dir, "data"), "--listen-client-urls", endpoint,
				"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", testport.Port(t))}, tc.flags...)
			startCairn(t, dir, args...)
			c := client(t, endpoint)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			for i := range writes {
				if _, err := c.Put(ctx, fmt.Sprintf("k%d", i), "v"); err != nil {
					t.Fatal(err)
				}
			}
			fsyncs, written := walMetrics(t, endpoint)
			switch {
			case tc.timed && (fsyncs < writes || written <= 0):
				t.Errorf("timed: %v fsyncs and %v bytes counted after %d writes, want at least %d and some", fsyncs, written, writes, writes)
			case !tc.timed && (fsyncs != 0 || written != 0):
				t.Errorf("untimed: %v fsyncs and %v bytes counted, want 0 and 0", fsyncs, written)
			}
		})
	}
}

// walMetrics reads the raft log's fsync count and written bytes from
// endpoint's /metrics.
func walMetrics(t *testing.T, endpoint string) (fsyncs, written float64) {
	t.Helper()
	resp, err := http.Get(endpoint + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	f, w := fams["etcd_disk_wal_fsync_duration_seconds"], fams["etcd_disk_wal_write_bytes_total"]
	if f == nil || w == nil || len(f.GetMetric()) != 1 || len(w.GetMetric()) != 1 {
		t.Fatalf("/metrics: etcd_disk_wal_fsync_duration_seconds %v, etcd_disk_wal_write_bytes_total %v", f, w)
	}
	m := w.GetMetric()[0]
	return float64(f.GetMetric()[0].GetHistogram().GetSampleCount()), m.GetCounter().GetValue() + m.GetGauge().GetValue()
}
