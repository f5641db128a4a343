package compat

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"testing"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
	"github.com/cairn-kv/cairn/node/testport"
)

// tlsFiles are the certificates of TestEtcdctlTLSCluster: one CA for
// both clusters, so etcdctl's command lines (and what it prints of them)
// are the same on both sides.
type tlsFiles struct {
	ca                   string
	server, serverKey    string // every member's client certificate
	peer, peerKey        string // every member's peer certificate
	client, clientKey    string // etcdctl's, common name "client"
	stranger, strangerKy string // another CA's, common name "client"
}

// TestEtcdctlTLSCluster runs etcdctl with --cacert, --cert and --key
// against a three-member etcd and a three-member Cairn (single-group, and
// sharded in three ranges) whose client and peer URLs are https with
// client certificates required on both (certificates the test makes), and
// compares what it prints: requests through every member, a client
// without a certificate, one whose certificate another CA signed, one that
// does not trust the servers' CA; then with auth on, the certificate's
// common name as the user when no --user is given, as etcd's
// --client-cert-auth does.
func TestEtcdctlTLSCluster(t *testing.T) {
	bin := buildEtcdctl(t)
	ca, rogue := nodetest.NewCA(t, "cluster"), nodetest.NewCA(t, "rogue")
	var f tlsFiles
	f.ca = ca.CAFile
	f.server, f.serverKey = ca.Issue(t, "server")
	f.peer, f.peerKey = ca.Issue(t, "member")
	f.client, f.clientKey = ca.Issue(t, "client")
	f.stranger, f.strangerKy = rogue.Issue(t, "client")
	for _, mode := range []struct {
		name   string
		splits []string
	}{{"single-group", nil}, {"sharded", []string{"k1", "m"}}} {
		t.Run(mode.name, func(t *testing.T) {
			etcd := startTLSEtcdCluster(t, f)
			cairn := startTLSCairnCluster(t, f, mode.splits)
			mask := func(s string) string {
				s = maskCtlTLS(s)
				if mode.splits != nil {
					s = maskHeaderRevs(s)
				}
				return s
			}
			for i, st := range ctlTLSScript(f) {
				var want ctlResult
				for _, c := range []struct {
					name string
					eps  []string
				}{{"etcd", etcd}, {"cairn", cairn}} {
					s := &server{name: c.name, endpoint: c.eps[st.member]}
					got := runEtcdctl(t, bin, s, st.ctlStep).masked(mask)
					if c.name == "etcd" {
						want = got
						if testing.Verbose() {
							t.Logf("step %d (member %d): %s\n%v", i, st.member, st.ctlStep, want)
						}
						continue
					}
					if got != want {
						t.Errorf("step %d (member %d): etcdctl %s: outputs differ\n--- etcd:\n%v\n--- cairn:\n%v", i, st.member, st.ctlStep, want, got)
					}
				}
			}
		})
	}
}

// tlsStep is an etcdctl step and the member it talks to.
type tlsStep struct {
	member int
	ctlStep
}

// ctlTLSScript is TestEtcdctlTLSCluster's steps.
func ctlTLSScript(f tlsFiles) []tlsStep {
	certs := []string{"--cacert=" + f.ca, "--cert=" + f.client, "--key=" + f.clientKey}
	with := func(member int, args ...string) tlsStep {
		return tlsStep{member, ctlStep{args: append(append([]string{}, args...), certs...)}}
	}
	bare := func(member int, args ...string) tlsStep { return tlsStep{member, ctlStep{args: args}} }
	var s []tlsStep
	for m := range 3 {
		s = append(s, with(m, "put", fmt.Sprintf("k%d", m), fmt.Sprintf("v%d", m)))
	}
	s = append(s, with(0, "put", "z", "last"))
	for m := range 3 {
		s = append(s, with(m, "get", "", "--prefix"), with(m, "get", "k", "--prefix", "--consistency=s"))
	}
	s = append(s,
		with(1, "del", "k1", "--prev-kv"),
		with(2, "get", "", "--from-key", "--keys-only"),
		// Refused: no certificate, another CA's certificate, not
		// trusting the servers' CA (a short timeout: the client retries
		// the handshake until it runs out).
		bare(0, "get", "k0", "--command-timeout=1s", "--cacert="+f.ca),
		bare(0, "get", "k0", "--command-timeout=1s", "--cacert="+f.ca, "--cert="+f.stranger, "--key="+f.strangerKy),
		bare(0, "get", "k0", "--command-timeout=1s", "--cert="+f.client, "--key="+f.clientKey),
		// Auth, with the certificate's common name as the user.
		with(0, "user", "add", "root", "--new-user-password=rootpw"),
		with(0, "user", "grant-role", "root", "root"),
		with(0, "role", "add", "kw"),
		with(0, "role", "grant-permission", "kw", "readwrite", "k", "--prefix"),
		with(0, "user", "add", "client", "--no-password"),
		with(0, "user", "grant-role", "client", "kw"),
		with(0, "auth", "enable"),
	)
	for m := range 3 {
		s = append(s,
			with(m, "put", fmt.Sprintf("k%d", m), "by-cn"),
			with(m, "get", "k", "--prefix"),
			with(m, "put", "z", "refused"),
			with(m, "get", "z"),
			with(m, "get", "z", "--user=root:rootpw"),
			with(m, "user", "list"),
		)
	}
	s = append(s,
		with(2, "role", "revoke-permission", "kw", "k", "--prefix", "--user=root:rootpw"),
		with(1, "get", "k0"),
		with(0, "auth", "disable", "--user=root:rootpw"),
		with(2, "get", "", "--prefix"),
	)
	return s
}

// ctlTLSMasks hide what differs between two TLS clusters by design: the
// ports in what etcdctl's client logs (the endpoint is https, which
// normalizeCtl replaces only whole), and the transport error of a refused
// handshake, which races on either server (a broken pipe or a failed read
// of the server preface); the code and etcdctl's verdict stay compared.
var ctlTLSMasks = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`127\.0\.0\.1:\d+`), "ADDR"},
	{regexp.MustCompile(`latest balancer error: (?:[^"\\]|\\.)*`), "latest balancer error: ERR"},
}

func maskCtlTLS(s string) string {
	for _, m := range ctlTLSMasks {
		s = m.re.ReplaceAllString(s, m.with)
	}
	return s
}

// startTLSEtcdCluster starts a three-member etcd with https client and
// peer URLs, client certificates required on both, and returns its client
// endpoints.
func startTLSEtcdCluster(t *testing.T, f tlsFiles) []string {
	t.Helper()
	cfgs := make([]*embed.Config, 3)
	var initial []string
	for i := range cfgs {
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = t.TempDir()
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cfg.UnsafeNoFsync = true
		cfg.BcryptCost = authBcryptCost
		client, peer := mustURL(t, "https://"+testport.Addr(t)), mustURL(t, "https://"+testport.Addr(t))
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
		cfg.ListenMetricsUrls = nil
		cfg.InitialClusterToken = "etcdctl-tls"
		cfg.ClientTLSInfo.CertFile, cfg.ClientTLSInfo.KeyFile = f.server, f.serverKey
		cfg.ClientTLSInfo.TrustedCAFile, cfg.ClientTLSInfo.ClientCertAuth = f.ca, true
		cfg.PeerTLSInfo.CertFile, cfg.PeerTLSInfo.KeyFile = f.peer, f.peerKey
		cfg.PeerTLSInfo.TrustedCAFile, cfg.PeerTLSInfo.ClientCertAuth = f.ca, true
		cfgs[i] = cfg
		initial = append(initial, cfg.Name+"="+peer.String())
	}
	return startEmbedCluster(t, cfgs, initial)
}

// startTLSCairnCluster starts a three-member Cairn configured as
// startTLSEtcdCluster's etcd (sharded and split at splits unless nil) and
// returns its client endpoints.
func startTLSCairnCluster(t *testing.T, f tlsFiles, splits []string) []string {
	t.Helper()
	https := func(u string) string { return strings.Replace(u, "http://", "https://", 1) }
	eps := startCairnClusterWith(t, 3, func(c *node.Config) {
		for i := range c.ListenClientURLs {
			c.ListenClientURLs[i] = https(c.ListenClientURLs[i])
		}
		for i := range c.ListenPeerURLs {
			c.ListenPeerURLs[i] = https(c.ListenPeerURLs[i])
		}
		c.InitialCluster = strings.ReplaceAll(c.InitialCluster, "http://", "https://")
		c.InitialClusterToken = "etcdctl-tls"
		c.BcryptCost = authBcryptCost
		c.ClientTLS = node.TLS{CertFile: f.server, KeyFile: f.serverKey, TrustedCAFile: f.ca, ClientCertAuth: true}
		c.PeerTLS = node.TLS{CertFile: f.peer, KeyFile: f.peerKey, TrustedCAFile: f.ca, ClientCertAuth: true}
		if splits != nil {
			c.Sharded = true
			for _, k := range splits {
				c.InitialSplitKeys = append(c.InitialSplitKeys, []byte(k))
			}
		}
	})
	for i := range eps {
		eps[i] = https(eps[i])
	}
	return eps
}
