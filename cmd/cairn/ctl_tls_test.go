package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
)

// TestCtlTLSAuth: against a sharded member serving TLS only (client
// certificates required) with auth enabled, cairn ranges and cairn range
// split take etcdctl's --cacert, --cert, --key, --insecure-skip-tls-verify
// and --user (user:password, or --password), and their ETCDCTL_*
// variables: the commands succeed with them and fail without the
// credentials or with a wrong password.
func TestCtlTLSAuth(t *testing.T) {
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name, kind string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile := write("ca.pem", "CERTIFICATE", caDER)
	issue := func(cn string, serial int64) (string, string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		return write(cn+".pem", "CERTIFICATE", der), write(cn+"-key.pem", "EC PRIVATE KEY", kb)
	}
	serverCert, serverKey := issue("server", 2)
	// The client certificate's common name is no user: without a token the
	// member refuses the admin call.
	clientCert, clientKey := issue("nobody", 3)

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

	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	pair, err := tls.LoadX509KeyPair(clientCert, clientKey)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 5 * time.Second,
		TLS: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}})
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
	if lines := strings.Count(out.String(), "\n"); lines != 3 {
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
