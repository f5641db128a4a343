package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestCtlTLSAuth: against a sharded member serving TLS only (client
// certificates required) with auth enabled, cairn ranges and cairn range
// split take etcdctl's --cacert, --cert, --key, --insecure-skip-tls-verify
// and --user (user:password, or --password), and their ETCDCTL_*
// variables: the commands succeed with them and fail without the
// credentials or with a wrong password.
func TestCtlTLSAuth(t *testing.T) {
	ca := nodetest.NewCA(t, "test")
	caFile := ca.CAFile
	serverCert, serverKey := ca.Issue(t, "server")
	// The client certificate's common name is no user: without a token the
	// member refuses the admin call.
	clientCert, clientKey := ca.Issue(t, "nobody")

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cfg := node.Config{Name: "m", DataDir: t.TempDir(), ListenClientURLs: []string{"https://127.0.0.1:0"},
		ListenPeerURLs: []string{"http://127.0.0.1:0"}, HeartbeatInterval: 20 * time.Millisecond,
		ElectionTimeout: 200 * time.Millisecond, Sharded: true}
	cfg.ClientTLS.CertFile, cfg.ClientTLS.KeyFile, cfg.ClientTLS.TrustedCAFile = serverCert, serverKey, caFile
	cfg.ClientTLS.ClientCertAuth = true
	n, err := node.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	url := n.ClientURLs()[0]
	host := strings.TrimPrefix(url, "https://")

	pair, err := tls.LoadX509KeyPair(clientCert, clientKey)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 5 * time.Second,
		TLS: &tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{pair}}})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for _, step := range []func() error{
		func() error { _, err := cli.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}

	tlsFlags := []string{"--cacert", caFile, "--cert", clientCert, "--key", clientKey}
	var out bytes.Buffer
	// ranges over https:// with --user user:password.
	if err := rangesCommand(append([]string{"--endpoints", url, "--user", "root:rootpw", "-w", "json"}, tlsFlags...), nil, &out); err != nil {
		t.Fatalf("ranges over TLS with --user: %v", err)
	}
	if !strings.Contains(out.String(), `"id":1`) {
		t.Fatalf("ranges: %s", out.String())
	}
	// range split, the endpoint without a scheme (TLS because of --cacert),
	// --user with --password.
	out.Reset()
	if err := rangeCommand(append([]string{"split", "--endpoints", host, "--user", "root", "--password", "rootpw"}, append(tlsFlags, "m")...), nil, &out); err != nil {
		t.Fatalf("range split over TLS with --user and --password: %v", err)
	}
	if !strings.Contains(out.String(), "range 2") {
		t.Fatalf("range split: %s", out.String())
	}
	// The environment's ETCDCTL_*, and --insecure-skip-tls-verify in place
	// of the CA.
	out.Reset()
	env := []string{"ETCDCTL_ENDPOINTS=" + url, "ETCDCTL_INSECURE_SKIP_TLS_VERIFY=true", "ETCDCTL_CERT=" + clientCert,
		"ETCDCTL_KEY=" + clientKey, "ETCDCTL_USER=root:rootpw"}
	if err := rangeCommand([]string{"split", "t"}, env, &out); err != nil {
		t.Fatalf("range split with ETCDCTL_*: %v", err)
	}
	out.Reset()
	env = []string{"ETCDCTL_ENDPOINTS=" + url, "ETCDCTL_CACERT=" + caFile, "ETCDCTL_CERT=" + clientCert,
		"ETCDCTL_KEY=" + clientKey, "ETCDCTL_USER=root", "ETCDCTL_PASSWORD=rootpw"}
	if err := rangesCommand(nil, env, &out); err != nil {
		t.Fatalf("ranges with ETCDCTL_*: %v", err)
	}
	if lines := strings.Count(out.String(), "\n"); lines != 4 { // the summary, then a line per range
		t.Fatalf("ranges after two splits: %d lines\n%s", lines, out.String())
	}

	// Refusals: no credentials, a wrong password, no client certificate,
	// the server not verified.
	for _, c := range []struct {
		name string
		args []string
		want string
	}{
		{"no user", append([]string{"split", "--endpoints", url}, append(tlsFlags, "x")...), "user name not found"}, // the certificate's CN as user
		{"wrong password", append([]string{"split", "--endpoints", url, "--user", "root:nope"}, append(tlsFlags, "x")...), "authentication failed"},
		{"no client certificate", []string{"split", "--endpoints", url, "--cacert", caFile, "--user", "root:rootpw", "--dial-timeout", "1s", "x"}, ""},
		{"server not verified", []string{"split", "--endpoints", url, "--cert", clientCert, "--key", clientKey, "--user", "root:rootpw", "--dial-timeout", "1s", "x"}, ""},
		{"user without a password", append([]string{"split", "--endpoints", url, "--user", "root"}, append(tlsFlags, "x")...), "without a password"},
	} {
		err := rangeCommand(c.args, nil, &out)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
	}
}
