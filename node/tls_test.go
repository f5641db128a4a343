package node_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/node/testport"
	"github.com/cairn-kv/cairn/proto/internalpb"
)

// clientTLS is a client's TLS config trusting caFile, with the certificate
// certFile/keyFile unless they are empty.
func clientTLS(t *testing.T, caFile, certFile, keyFile string) *tls.Config {
	t.Helper()
	pemCA, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemCA)
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	if certFile != "" {
		c, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg
}

// tlsClient is an etcd client of urls over cfg, closed when the test ends.
func tlsClient(t *testing.T, cfg *tls.Config, urls ...string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: urls, TLS: cfg, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// internalCall calls the node-to-node service's Revisions at addr
// (host:port) with creds, from local (nil: any address).
func internalCall(t *testing.T, addr string, creds credentials.TransportCredentials, local net.Addr) error {
	t.Helper()
	d := net.Dialer{LocalAddr: local, Timeout: 3 * time.Second}
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(creds),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return d.DialContext(ctx, "tcp", a) }))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = internalpb.NewNodeClient(conn).Revisions(ctx, &internalpb.RevisionsRequest{Count: 1})
	return err
}

func hostOf(t *testing.T, raw string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u.Host
}

// TestInternalServiceClosedOnClientPort: an anonymous client of the client
// port cannot call the node-to-node service's member calls (they answer
// Unimplemented there); the operator's SplitRange is still served.
func TestInternalServiceClosedOnClientPort(t *testing.T) {
	c := nodetest.Start(t, 1, nodetest.Sharded())
	addr := hostOf(t, c.Node(0).ClientURLs()[0])
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	nc := internalpb.NewNodeClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	calls := map[string]func() error{
		"Revisions": func() error { _, err := nc.Revisions(ctx, &internalpb.RevisionsRequest{Count: 1}); return err },
		"Closed":    func() error { _, err := nc.Closed(ctx, &internalpb.ClosedRequest{}); return err },
		"Write":     func() error { _, err := nc.Write(ctx, &internalpb.WriteRequest{Range: 1}); return err },
		"Kick":      func() error { _, err := nc.Kick(ctx, &internalpb.KickRequest{Range: 1}); return err },
	}
	for name, call := range calls {
		if err := call(); status.Code(err) != codes.Unimplemented {
			t.Errorf("%s on the client port: got %v, want Unimplemented", name, err)
		}
	}
	if _, err := nc.SplitRange(ctx, &internalpb.SplitRangeRequest{Key: []byte("m")}); err != nil {
		t.Errorf("SplitRange on the client port: %v", err)
	}
}

// TestPeerPortAdmitsMembersOnly: without peer TLS, the peer port serves
// the node-to-node service to callers from a member's address and refuses
// the others with PermissionDenied.
func TestPeerPortAdmitsMembersOnly(t *testing.T) {
	c := nodetest.Start(t, 1, nodetest.Sharded())
	peer := hostOf(t, c.Node(0).PeerURLs()[0])
	if err := internalCall(t, peer, insecure.NewCredentials(), &net.TCPAddr{IP: net.ParseIP("127.0.0.1")}); err != nil {
		t.Errorf("a call from the member's address: %v", err)
	}
	err := internalCall(t, peer, insecure.NewCredentials(), &net.TCPAddr{IP: net.ParseIP("127.0.0.2")})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("a call from 127.0.0.2, no member's address: got %v, want PermissionDenied", err)
	}
}

// TestClientCertAuth: under --client-cert-auth, clients with a certificate
// of the trusted CA are served (gRPC and /health over the same TLS); a
// client without a certificate, or with one of another CA, is refused.
func TestClientCertAuth(t *testing.T) {
	ca, rogue := nodetest.NewCA(t, "cluster"), nodetest.NewCA(t, "rogue")
	srvCert, srvKey := ca.Issue(t, "server")
	cliCert, cliKey := ca.Issue(t, "client")
	rogueCert, rogueKey := rogue.Issue(t, "client")
	c := nodetest.Start(t, 1, nodetest.Edit(func(cfg *node.Config) {
		cfg.ListenClientURLs = []string{"https://127.0.0.1:0"}
		cfg.ClientTLS = node.TLS{CertFile: srvCert, KeyFile: srvKey, TrustedCAFile: ca.CAFile, ClientCertAuth: true}
	}))
	urls := c.Node(0).ClientURLs()
	if !strings.HasPrefix(urls[0], "https://") {
		t.Fatalf("client URL %s: want https://", urls[0])
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	good := tlsClient(t, clientTLS(t, ca.CAFile, cliCert, cliKey), urls...)
	if _, err := good.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put with a client certificate: %v", err)
	}
	if r, err := good.Get(ctx, "k"); err != nil || len(r.Kvs) != 1 {
		t.Fatalf("get with a client certificate: %v %v", r, err)
	}
	for name, cfg := range map[string]*tls.Config{
		"no certificate":           clientTLS(t, ca.CAFile, "", ""),
		"another CA's certificate": clientTLS(t, ca.CAFile, rogueCert, rogueKey),
	} {
		cli := tlsClient(t, cfg, urls...)
		short, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := cli.Get(short, "k")
		cancel()
		if err == nil {
			t.Errorf("%s: get served, want refused", name)
		}
	}
	// The HTTP endpoints, over the same TLS.
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: clientTLS(t, ca.CAFile, cliCert, cliKey), ForceAttemptHTTP2: true}}
	resp, err := hc.Get(urls[0] + "/health")
	if err != nil {
		t.Fatalf("/health over TLS: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"health":"true"`) {
		t.Errorf("/health over TLS: %d %s", resp.StatusCode, body)
	}
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: clientTLS(t, ca.CAFile, "", "")}}
	if resp, err := anon.Get(urls[0] + "/health"); err == nil {
		resp.Body.Close()
		t.Errorf("/health without a client certificate: %d, want refused", resp.StatusCode)
	}
}

// TestPeerTLSCluster: a three-member sharded cluster with client and peer
// mTLS serves the etcd client across members (forwarded writes, reads and
// lease calls travel the peer port). A process with a certificate of
// another CA, or of the cluster's CA with a common name not allowed or
// revoked by --peer-crl-file, cannot call the node-to-node service on a
// peer port nor complete a raft connection; one with another CA's
// certificate cannot join.
func TestPeerTLSCluster(t *testing.T) {
	ca, rogue := nodetest.NewCA(t, "cluster"), nodetest.NewCA(t, "rogue")
	srvCert, srvKey := ca.Issue(t, "server")
	peerCert, peerKey := ca.Issue(t, "member")
	cliCert, cliKey := ca.Issue(t, "client")
	intruderCert, intruderKey := ca.Issue(t, "intruder") // right CA, CN not allowed
	rogueCert, rogueKey := rogue.Issue(t, "member")
	revokedCert, revokedKey := ca.Issue(t, "member") // right CA and CN, revoked
	crl := ca.Revoke(t, revokedCert)
	secure := func(cfg *node.Config) {
		cfg.ListenClientURLs = []string{"https://127.0.0.1:0"}
		for i, u := range cfg.ListenPeerURLs {
			cfg.ListenPeerURLs[i] = strings.Replace(u, "http://", "https://", 1)
		}
		cfg.InitialCluster = strings.ReplaceAll(cfg.InitialCluster, "http://", "https://")
		cfg.ClientTLS = node.TLS{CertFile: srvCert, KeyFile: srvKey, TrustedCAFile: ca.CAFile, ClientCertAuth: true}
		cfg.PeerTLS = node.TLS{CertFile: peerCert, KeyFile: peerKey, TrustedCAFile: ca.CAFile, ClientCertAuth: true,
			AllowedCNs: []string{"member"}, CRLFile: crl}
	}
	c := nodetest.Start(t, 3, nodetest.Sharded("m"), nodetest.Edit(secure))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cliTLS := clientTLS(t, ca.CAFile, cliCert, cliKey)
	clis := make([]*clientv3.Client, 3)
	for i := range clis {
		clis[i] = tlsClient(t, cliTLS, c.Node(i).ClientURLs()...)
	}
	for i, cli := range clis {
		for _, k := range []string{"a", "z"} {
			if _, err := cli.Put(ctx, k, "v"+k); err != nil {
				t.Fatalf("put %s through member %d: %v", k, i, err)
			}
		}
	}
	for i, cli := range clis {
		r, err := cli.Get(ctx, "", clientv3.WithPrefix())
		if err != nil || len(r.Kvs) != 2 {
			t.Fatalf("get through member %d: %v %v", i, r, err)
		}
		l, err := cli.Grant(ctx, 60)
		if err != nil {
			t.Fatalf("grant through member %d: %v", i, err)
		}
		if _, err := cli.KeepAliveOnce(ctx, l.ID); err != nil {
			t.Fatalf("keepalive through member %d: %v", i, err)
		}
	}

	peer := hostOf(t, c.Node(0).PeerURLs()[0])
	// The members' own credentials are served on the peer port.
	if err := internalCall(t, peer, credentials.NewTLS(clientTLS(t, ca.CAFile, peerCert, peerKey)), nil); err != nil {
		t.Fatalf("a member's call on the peer port: %v", err)
	}
	for name, cfg := range map[string]*tls.Config{
		"no certificate":                   clientTLS(t, ca.CAFile, "", ""),
		"another CA's certificate":         clientTLS(t, ca.CAFile, rogueCert, rogueKey),
		"a common name that is disallowed": clientTLS(t, ca.CAFile, intruderCert, intruderKey),
		"a revoked certificate":            clientTLS(t, ca.CAFile, revokedCert, revokedKey),
	} {
		if err := internalCall(t, peer, credentials.NewTLS(cfg), nil); err == nil {
			t.Errorf("peer port, %s: node-to-node call served, want refused", name)
		}
	}

	// Raft: the peer port ends raft's TLS with the same checks.
	if err := raftProbe(t, peer, clientTLS(t, ca.CAFile, peerCert, peerKey)); err != nil {
		t.Errorf("raft connection with a member's certificate: %v", err)
	}
	for name, cfg := range map[string]*tls.Config{
		"another CA's certificate":         clientTLS(t, ca.CAFile, rogueCert, rogueKey),
		"a common name that is disallowed": clientTLS(t, ca.CAFile, intruderCert, intruderKey),
		"a revoked certificate":            clientTLS(t, ca.CAFile, revokedCert, revokedKey),
	} {
		if raftProbe(t, peer, cfg) == nil {
			t.Errorf("raft connection with %s: admitted, want refused", name)
		}
	}

	// Join: a member added, started with another CA's certificate, never
	// hears from the cluster.
	newPeer := "https://" + testport.Addr(t)
	if _, err := clis[0].MemberAddAsLearner(ctx, []string{newPeer}); err != nil {
		t.Fatal(err)
	}
	cfg := c.Config(0)
	cfg.Name, cfg.DataDir, cfg.InitialClusterState = "intruder", t.TempDir(), "existing"
	cfg.ListenPeerURLs, cfg.InitialAdvertisePeerURLs = []string{newPeer}, nil
	cfg.InitialCluster += ",intruder=" + newPeer
	cfg.InitialSplitKeys = nil
	cfg.PeerTLS = node.TLS{CertFile: rogueCert, KeyFile: rogueKey, TrustedCAFile: rogue.CAFile, ClientCertAuth: true}
	jctx, jcancel := context.WithTimeout(ctx, 8*time.Second)
	defer jcancel()
	if n, err := node.Start(jctx, cfg); err == nil {
		n.Close()
		t.Errorf("a member with another CA's peer certificate joined")
	}
}

// TestTLSConfigRefused: as etcd, an https:// URL without a certificate,
// and inconsistent TLS versions, refuse to start.
func TestTLSConfigRefused(t *testing.T) {
	for name, tc := range map[string]struct {
		cfg  node.Config
		want string
	}{
		"https client URL without a certificate": {node.Config{ListenClientURLs: []string{"https://127.0.0.1:0"}},
			"--cert-file, --key-file"},
		"https metrics URL without a certificate": {node.Config{ListenMetricsURLs: []string{"https://127.0.0.1:0"}},
			"must be provided for metrics secure url"},
		"https peer URL without a certificate": {node.Config{ListenPeerURLs: []string{"https://127.0.0.1:0"}},
			"--peer-cert-file, --peer-key-file"},
		"min above max": {node.Config{TLSMinVersion: "TLS1.3", TLSMaxVersion: "TLS1.2"}, "greater than max version"},
		"cipher suites with TLS 1.3 only": {node.Config{TLSMinVersion: "TLS1.3",
			CipherSuites: []string{"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"}}, "cipher suites cannot be configured"},
	} {
		tc.cfg.DataDir = t.TempDir()
		n, err := node.Start(context.Background(), tc.cfg)
		if err == nil {
			n.Close()
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error mentioning %q", name, err, tc.want)
		}
	}
}

// TestMetricsURLOverTLS: an https:// metrics URL serves /metrics and the
// probes over TLS with the client TLS settings, as etcd's: with
// --client-cert-auth a client with a certificate of the CA is served, one
// without is refused at the handshake, and plain HTTP gets no answer.
func TestMetricsURLOverTLS(t *testing.T) {
	ca := nodetest.NewCA(t, "cluster")
	srvCert, srvKey := ca.Issue(t, "server")
	cliCert, cliKey := ca.Issue(t, "client")
	c := nodetest.Start(t, 1, nodetest.Edit(func(cfg *node.Config) {
		cfg.ListenMetricsURLs = []string{"https://127.0.0.1:0"}
		cfg.ClientTLS = node.TLS{CertFile: srvCert, KeyFile: srvKey, TrustedCAFile: ca.CAFile, ClientCertAuth: true}
	}))
	murls := c.Node(0).MetricsURLs()
	if len(murls) != 1 || !strings.HasPrefix(murls[0], "https://") {
		t.Fatalf("metrics URLs %v: want one https://", murls)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: clientTLS(t, ca.CAFile, cliCert, cliKey)}}
	for path, want := range map[string]string{"/metrics": "etcd_server_has_leader 1", "/health": `"health":"true"`} {
		resp, err := hc.Get(murls[0] + path)
		if err != nil {
			t.Fatalf("%s over TLS: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Errorf("%s over TLS: %d, want 200 with %q", path, resp.StatusCode, want)
		}
	}
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: clientTLS(t, ca.CAFile, "", "")}}
	if resp, err := anon.Get(murls[0] + "/metrics"); err == nil {
		resp.Body.Close()
		t.Errorf("/metrics without a client certificate: %d, want refused", resp.StatusCode)
	}
	plain := &http.Client{Timeout: 5 * time.Second}
	if resp, err := plain.Get("http://" + strings.TrimPrefix(murls[0], "https://") + "/metrics"); err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(body), "etcd_server_has_leader") {
			t.Errorf("/metrics over plain HTTP on the https metrics URL: %d, served", resp.StatusCode)
		}
	}
}

// TestClientTLSOptions: etcd's client TLS options take effect, not only
// parse: a unixs:// client URL serves the etcd client over TLS;
// --client-crl-file refuses a revoked certificate of the trusted CA at the
// handshake; --tls-max-version TLS1.2 is what clients get, and a client
// wanting TLS 1.3 only is refused; --cipher-suites is the one suite
// served, and a client offering none of it is refused.
func TestClientTLSOptions(t *testing.T) {
	ca := nodetest.NewCA(t, "cluster")
	srvCert, srvKey := ca.Issue(t, "server")
	cliCert, cliKey := ca.Issue(t, "client")
	revCert, revKey := ca.Issue(t, "revoked")
	crl := ca.Revoke(t, revCert)
	// As etcd's, a unix URL is host:port and names a socket of that name
	// in the working directory.
	t.Chdir(t.TempDir())
	sock := "unixs://localhost:2379"
	c := nodetest.Start(t, 1, nodetest.Edit(func(cfg *node.Config) {
		cfg.ListenClientURLs = []string{"https://127.0.0.1:0", sock}
		cfg.ClientTLS = node.TLS{CertFile: srvCert, KeyFile: srvKey, TrustedCAFile: ca.CAFile, ClientCertAuth: true, CRLFile: crl}
		cfg.TLSMaxVersion = "TLS1.2"
		cfg.CipherSuites = []string{"TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"}
	}))
	var https, unixs string
	for _, u := range c.Node(0).ClientURLs() {
		switch {
		case strings.HasPrefix(u, "https://"):
			https = u
		case strings.HasPrefix(u, "unixs://"):
			unixs = u
		}
	}
	if https == "" || unixs != sock {
		t.Fatalf("client URLs %v: want an https:// one and %s", c.Node(0).ClientURLs(), sock)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	good := clientTLS(t, ca.CAFile, cliCert, cliKey)
	cli := tlsClient(t, good, unixs)
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put over %s: %v", unixs, err)
	}
	if r, err := cli.Get(ctx, "k"); err != nil || len(r.Kvs) != 1 {
		t.Fatalf("get over %s: %v %v", unixs, r, err)
	}

	// The handshakes, on the https URL. With TLS 1.2 the server's refusal
	// of a client certificate ends the client's handshake.
	addr := hostOf(t, https)
	handshake := func(cfg *tls.Config) (tls.ConnectionState, error) {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
		if err != nil {
			return tls.ConnectionState{}, err
		}
		defer conn.Close()
		return conn.ConnectionState(), nil
	}
	st, err := handshake(clientTLS(t, ca.CAFile, cliCert, cliKey))
	if err != nil {
		t.Fatalf("handshake with a valid certificate: %v", err)
	}
	if st.Version != tls.VersionTLS12 {
		t.Errorf("TLS version %x under --tls-max-version TLS1.2, want %x", st.Version, tls.VersionTLS12)
	}
	if st.CipherSuite != tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 {
		t.Errorf("cipher suite %s, want the only one --cipher-suites names", tls.CipherSuiteName(st.CipherSuite))
	}
	other := clientTLS(t, ca.CAFile, cliCert, cliKey)
	other.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}
	if _, err := handshake(other); err == nil {
		t.Errorf("handshake of a client offering only a cipher suite --cipher-suites leaves out: accepted, want refused")
	}
	if _, err := handshake(clientTLS(t, ca.CAFile, revCert, revKey)); err == nil {
		t.Errorf("handshake with a certificate the CRL revokes: accepted, want refused")
	}
	tls13 := clientTLS(t, ca.CAFile, cliCert, cliKey)
	tls13.MinVersion = tls.VersionTLS13
	if _, err := handshake(tls13); err == nil {
		t.Errorf("handshake of a TLS 1.3-only client under --tls-max-version TLS1.2: accepted, want refused")
	}
}

// TestAutoTLS: with --auto-tls and --peer-auto-tls and no certificate
// files, a three-member cluster makes self-signed certificates under
// <data-dir>/fixtures/client and /peer, valid for
// --self-signed-cert-validity years, and serves clients over TLS through
// every member (forwarded calls cross the peer ports over TLS). A
// self-signed peer certificate authenticates nobody, so the peer port
// still admits callers by address: a TLS caller from an address that is
// no member's is refused.
func TestAutoTLS(t *testing.T) {
	c := nodetest.Start(t, 3, nodetest.Sharded("m"), nodetest.Edit(func(cfg *node.Config) {
		cfg.ListenClientURLs = []string{"https://127.0.0.1:0"}
		for i, u := range cfg.ListenPeerURLs {
			cfg.ListenPeerURLs[i] = strings.Replace(u, "http://", "https://", 1)
		}
		cfg.InitialCluster = strings.ReplaceAll(cfg.InitialCluster, "http://", "https://")
		cfg.ClientTLS = node.TLS{AutoTLS: true}
		cfg.PeerTLS = node.TLS{AutoTLS: true}
		cfg.SelfSignedCertValidity = 2
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	insecureTLS := &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12} //nolint:gosec // self-signed: nothing to verify
	for i := range c.Size() {
		for _, side := range []string{"client", "peer"} {
			if _, err := os.Stat(c.Config(i).DataDir + "/fixtures/" + side + "/cert.pem"); err != nil {
				t.Errorf("member %d: %s certificate: %v", i, side, err)
			}
		}
		cli := tlsClient(t, insecureTLS, c.Node(i).ClientURLs()...)
		for _, k := range []string{"a", "z"} {
			if _, err := cli.Put(ctx, k, "v"); err != nil {
				t.Fatalf("put %s through member %d: %v", k, i, err)
			}
		}
		if r, err := cli.Get(ctx, "", clientv3.WithPrefix()); err != nil || len(r.Kvs) != 2 {
			t.Fatalf("get through member %d: %v %v", i, r, err)
		}
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", hostOf(t, c.Node(0).ClientURLs()[0]), insecureTLS)
	if err != nil {
		t.Fatal(err)
	}
	cert := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	if left := time.Until(cert.NotAfter); left < 365*24*time.Hour || left > 2*366*24*time.Hour {
		t.Errorf("the self-signed client certificate expires %v, want about 2 years from now", cert.NotAfter)
	}

	peer := hostOf(t, c.Node(0).PeerURLs()[0])
	if err := internalCall(t, peer, credentials.NewTLS(insecureTLS), &net.TCPAddr{IP: net.ParseIP("127.0.0.1")}); err != nil {
		t.Errorf("a TLS call of the peer port from the members' address: %v", err)
	}
	err = internalCall(t, peer, credentials.NewTLS(insecureTLS), &net.TCPAddr{IP: net.ParseIP("127.0.0.2")})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("a TLS call of the peer port from 127.0.0.2, no member's address: got %v, want PermissionDenied", err)
	}
}
