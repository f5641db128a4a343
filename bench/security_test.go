package main

import (
	"crypto/tls"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
)

// TestSecuredSystems: the TLS and auth systems exist, run the put and
// range scenarios, and start their servers with the flags their security
// needs (and the plain ones without).
func TestSecuredSystems(t *testing.T) {
	certs := &certFiles{ca: "CA", serverCert: "SC", serverKey: "SK", clientCert: "CC", clientKey: "CK"}
	env := &environment{self: "self", cairn: "cairn"}
	for _, c := range []struct {
		name string
		sec  security
		want []string // flags the member's command has
	}{
		{"etcd-tls", secTLS, []string{"-cert-file", "SC", "-key-file", "SK", "-trusted-ca-file", "CA", "-client-cert-auth"}},
		{"cairn-tls", secTLS, []string{"--cert-file", "SC", "--key-file", "SK", "--trusted-ca-file", "CA", "--client-cert-auth", "--single-group"}},
		{"etcd-auth", secAuth, nil},
		{"cairn-auth", secAuth, []string{"--single-group"}},
	} {
		i := slices.IndexFunc(systems(), func(s system) bool { return s.name == c.name })
		if i < 0 {
			t.Errorf("no system %s", c.name)
			continue
		}
		s := systems()[i]
		if s.sec != c.sec || s.nodes != 1 || !slices.Equal(s.scenarios, []string{"put", "range-linearizable"}) {
			t.Errorf("%s: sec %d, %d nodes, scenarios %v", c.name, s.sec, s.nodes, s.scenarios)
		}
		m := memberSpec{name: "m1", dir: "d", clientURL: "https://127.0.0.1:1", peerURL: "http://127.0.0.1:2", initialCluster: "m1=http://127.0.0.1:2"}
		if s.sec == secTLS {
			m.certs = certs
		}
		argv := s.command(env, m)
		for _, f := range c.want {
			if !slices.Contains(argv, f) {
				t.Errorf("%s: command %v lacks %s", c.name, argv, f)
			}
		}
		if s.sec != secTLS && slices.ContainsFunc(argv, func(a string) bool { return a == "-cert-file" || a == "--cert-file" }) {
			t.Errorf("%s: command %v serves TLS", c.name, argv)
		}
		if _, _, err := selectRun(config{systems: []string{c.name}, scenarios: []string{"put", "range-linearizable"}}, smokeSizes); err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	// The plain systems are unchanged.
	for _, s := range systems() {
		if (s.name == "etcd" || s.name == "cairn") && s.sec != secNone {
			t.Errorf("%s: sec %d, want none", s.name, s.sec)
		}
	}
}

// TestBenchFlags: the benchmark tool reaches a TLS system with the
// harness's client certificate, and an auth system as benchUser once auth
// is on (before, as nobody).
func TestBenchFlags(t *testing.T) {
	certs := &certFiles{ca: "CA", clientCert: "CC", clientKey: "CK"}
	for _, c := range []struct {
		in   instance
		want []string
	}{
		{instance{}, nil},
		{instance{certs: certs}, []string{"--cacert", "CA", "--cert", "CC", "--key", "CK"}},
		{instance{}, nil}, // auth not on yet
		{instance{authOn: true}, []string{"--user", "bench:bench-pw"}},
	} {
		if got := c.in.benchFlags(); !slices.Equal(got, c.want) {
			t.Errorf("benchFlags(certs %v, auth %v) = %v, want %v", c.in.certs != nil, c.in.authOn, got, c.want)
		}
		if c.in.certs != nil {
			continue // the files do not exist; TestMakeCerts dials with real ones
		}
		cfg, err := c.in.clientConfig()
		if err != nil {
			t.Fatal(err)
		}
		if cfg.TLS != nil {
			t.Errorf("clientConfig: TLS without certificates")
		}
		if c.in.authOn != (cfg.Username == benchUser && cfg.Password == benchPassword) {
			t.Errorf("clientConfig: user %q with auth on %v", cfg.Username, c.in.authOn)
		}
	}
}

// TestMakeCerts: the files makeCerts writes make a working mutual TLS
// handshake on 127.0.0.1 as the servers configure it (client certificate
// required and verified), and a client without the certificate is
// refused.
func TestMakeCerts(t *testing.T) {
	f, err := makeCerts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srvInfo := transport.TLSInfo{CertFile: f.serverCert, KeyFile: f.serverKey, TrustedCAFile: f.ca, ClientCertAuth: true}
	srvCfg, err := srvInfo.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	l, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				if tc := c.(*tls.Conn); tc.Handshake() == nil {
					_, _ = tc.Write([]byte("ok"))
				}
			}()
		}
	}()
	dial := func(in *instance) error {
		cfg, err := in.tlsConfig()
		if err != nil {
			return err
		}
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", l.Addr().String(), cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, 2)
		if _, err := c.Read(b); err != nil {
			return err
		}
		if string(b) != "ok" {
			return errors.New("no answer")
		}
		return nil
	}
	if err := dial(&instance{certs: f}); err != nil {
		t.Errorf("client with the harness's certificate: %v", err)
	}
	noCert := *f
	noCert.clientCert, noCert.clientKey = "", ""
	if err := dial(&instance{certs: &noCert}); err == nil {
		t.Errorf("client without a certificate: served, want refused")
	}
}
