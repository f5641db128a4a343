package compat

import (
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// TestConfigFileIsEtcds: the YAML file cmd/cairn's TestConfigFile reads
// with --config-file is one etcd itself loads, with the same meaning for
// the settings Cairn takes from it.
func TestConfigFileIsEtcds(t *testing.T) {
	cfg, err := embed.ConfigFromFile("../../cmd/cairn/testdata/etcd.conf.yml")
	if err != nil {
		t.Fatalf("etcd does not load the file: %v", err)
	}
	if cfg.Name != "m1" || cfg.Dir != "/var/lib/m1" || cfg.TickMs != 50 || cfg.ElectionMs != 500 ||
		cfg.SnapshotCount != 5000 || cfg.QuotaBackendBytes != 8<<30 || cfg.MaxTxnOps != 1024 ||
		cfg.GRPCKeepAliveMinTime != 10*time.Second || cfg.WatchProgressNotifyInterval != 30*time.Second ||
		cfg.AutoCompactionRetention != "1000" || len(cfg.LogOutputs) != 2 || cfg.LogFormat != "console" ||
		cfg.ClientTLSInfo.CertFile != "/etc/m1.crt" || len(cfg.ListenClientUrls) != 2 || !cfg.EnablePprof {
		t.Errorf("etcd reads the file differently: %+v", cfg)
	}
}
