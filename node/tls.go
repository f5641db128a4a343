package node

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"slices"

	"github.com/soheilhy/cmux"
	"go.etcd.io/etcd/client/pkg/v3/tlsutil"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.uber.org/zap"
	"google.golang.org/grpc/credentials"
)

// TLS is one side's TLS settings, client or peer, as etcd's flags give
// them (the client side's --cert-file, --key-file, --trusted-ca-file,
// --client-cert-auth, --client-crl-file, --auto-tls; the peer side's
// --peer-* flags of the same names).
//
// A side serves TLS on its https:// (and, for clients, unixs://) URLs
// only; on http:// and unix:// URLs the settings are ignored with a
// warning, as etcd ignores them.
type TLS struct {
	// CertFile and KeyFile are this member's certificate and key, served
	// to whoever connects and, on the peer side, presented when this
	// member connects to another.
	CertFile, KeyFile string
	// TrustedCAFile verifies the certificates of those who connect; with
	// it a certificate is required (as etcd's).
	TrustedCAFile string
	// ClientCertAuth requires a verified certificate of whoever connects.
	ClientCertAuth bool
	// CRLFile refuses certificates it revokes.
	CRLFile string
	// AutoTLS makes a self-signed certificate (under
	// <data-dir>/fixtures/client or /peer) when CertFile and KeyFile are
	// not given: the traffic is encrypted, nobody is authenticated.
	AutoTLS bool
	// AllowedCNs and AllowedHostnames (peer side: etcd's
	// --peer-cert-allowed-cn, --peer-cert-allowed-hostname) admit only
	// certificates with one of these common names, or valid for one of
	// these host names; at most one of the two.
	AllowedCNs, AllowedHostnames []string
}

// empty reports whether no certificate is given (etcd's TLSInfo.Empty).
func (t TLS) empty() bool { return t.CertFile == "" && t.KeyFile == "" }

// tlsSettings are what both sides share: etcd's --cipher-suites,
// --tls-min-version, --tls-max-version.
type tlsSettings struct {
	cipherSuites []uint16
	min, max     uint16
}

// checkTLS validates the TLS settings as etcd does and returns the shared
// ones.
func (c Config) checkTLS() (tlsSettings, error) {
	var s tlsSettings
	var err error
	if s.min, err = tlsutil.GetTLSVersion(c.TLSMinVersion); err != nil {
		return s, fmt.Errorf("node: --tls-min-version: %w", err)
	}
	if s.max, err = tlsutil.GetTLSVersion(c.TLSMaxVersion); err != nil {
		return s, fmt.Errorf("node: --tls-max-version: %w", err)
	}
	if s.max != 0 && s.min > s.max {
		return s, fmt.Errorf("node: min version (%s) is greater than max version (%s)", c.TLSMinVersion, c.TLSMaxVersion)
	}
	if s.min == tls.VersionTLS13 && len(c.CipherSuites) > 0 {
		return s, errors.New("node: cipher suites cannot be configured when only TLS1.3 is enabled")
	}
	if len(c.CipherSuites) > 0 {
		if s.cipherSuites, err = tlsutil.GetCipherSuites(c.CipherSuites); err != nil {
			return s, fmt.Errorf("node: --cipher-suites: %w", err)
		}
	}
	for _, u := range slices.Concat(c.ListenClientURLs, c.ListenClientHTTPURLs) {
		if scheme := schemeOf(u); (scheme == "https" || scheme == "unixs") && c.ClientTLS.empty() && !c.ClientTLS.AutoTLS {
			return s, fmt.Errorf("node: TLS key/cert (--cert-file, --key-file) must be provided for client url %s with HTTPS scheme", u)
		}
	}
	for _, u := range slices.Concat(c.ListenPeerURLs, c.InitialAdvertisePeerURLs) {
		if scheme := schemeOf(u); scheme != "http" && scheme != "https" {
			return s, fmt.Errorf("node: peer URL %q: want http:// or https://", u)
		}
	}
	if schemeOf(c.ListenPeerURLs[0]) == "https" && c.PeerTLS.empty() && !c.PeerTLS.AutoTLS {
		return s, fmt.Errorf("node: TLS key/cert (--peer-cert-file, --peer-key-file) must be provided for peer url %s with HTTPS scheme", c.ListenPeerURLs[0])
	}
	if len(c.PeerTLS.AllowedCNs) > 0 && len(c.PeerTLS.AllowedHostnames) > 0 {
		return s, errors.New("node: --peer-cert-allowed-cn and --peer-cert-allowed-hostname are mutually exclusive")
	}
	for _, u := range c.ListenMetricsURLs {
		switch schemeOf(u) {
		case "http":
		case "https":
			if c.ClientTLS.empty() && !c.ClientTLS.AutoTLS {
				return s, fmt.Errorf("node: client TLS key/cert (--cert-file, --key-file) must be provided for metrics secure url %s", u)
			}
		default:
			return s, fmt.Errorf("node: metrics URL %q: want http:// or https://", u)
		}
	}
	if c.SelfSignedCertValidity == 0 {
		return s, errors.New("node: --self-signed-cert-validity must be at least 1 (year)")
	}
	return s, nil
}

// schemeOf is raw's URL scheme ("" if it does not parse).
func schemeOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Scheme
}

// tlsInfo is side's settings as etcd's transport takes them, with a
// self-signed certificate made under dir for hosts if side asks for auto
// TLS and gives no certificate (etcd's ClientSelfCert, PeerSelfCert).
func (n *Node) tlsInfo(side TLS, dir string, hosts []string) (*transport.TLSInfo, error) {
	s := n.tls
	var info transport.TLSInfo
	if side.empty() && side.AutoTLS {
		self, err := transport.SelfCert(zap.NewNop(), dir, hosts, n.cfg.SelfSignedCertValidity)
		if err != nil {
			return nil, fmt.Errorf("node: make a self-signed certificate: %w", err)
		}
		info = self
	} else {
		info = transport.TLSInfo{CertFile: side.CertFile, KeyFile: side.KeyFile, TrustedCAFile: side.TrustedCAFile,
			ClientCertAuth: side.ClientCertAuth, CRLFile: side.CRLFile,
			AllowedCNs: side.AllowedCNs, AllowedHostnames: side.AllowedHostnames}
	}
	info.CipherSuites, info.MinVersion, info.MaxVersion = s.cipherSuites, s.min, s.max
	info.Logger = zap.NewNop()
	// Fail at start, not at the first connection, on unreadable files.
	if _, err := info.ServerConfig(); err != nil {
		return nil, fmt.Errorf("node: TLS: %w", err)
	}
	return &info, nil
}

// clientTLS is the client side's TLS (nil: no https or unixs client URL).
func (n *Node) clientTLS() (*transport.TLSInfo, error) {
	secure := false
	var hosts []string
	for _, raw := range slices.Concat(n.cfg.ListenClientURLs, n.cfg.ListenClientHTTPURLs) {
		u, _ := url.Parse(raw)
		hosts = append(hosts, u.Host)
		switch u.Scheme {
		case "https", "unixs":
			secure = true
		default:
			if !n.cfg.ClientTLS.empty() || n.cfg.ClientTLS.ClientCertAuth {
				n.log.Warn("scheme is http or unix while client TLS is configured; ignoring it for this URL", "client-url", raw)
			}
		}
	}
	if !secure {
		return nil, nil
	}
	return n.tlsInfo(n.cfg.ClientTLS, filepath.Join(n.cfg.DataDir, "fixtures", "client"), hosts)
}

// metricsTLS is the TLS of the https metrics URLs: the client URLs' (info,
// nil if none is https), as etcd serves its secure metrics URLs with its
// client TLS settings; made here if no client URL needed it. It is nil if
// no metrics URL is https.
func (n *Node) metricsTLS(info *transport.TLSInfo) (*transport.TLSInfo, error) {
	var hosts []string
	for _, raw := range n.cfg.ListenMetricsURLs {
		if u, _ := url.Parse(raw); u.Scheme == "https" {
			hosts = append(hosts, u.Host)
		}
	}
	if len(hosts) == 0 || info != nil {
		return info, nil
	}
	return n.tlsInfo(n.cfg.ClientTLS, filepath.Join(n.cfg.DataDir, "fixtures", "client"), hosts)
}

// listenClient listens on one client URL as etcd does — TCP, or a unix
// socket named by the URL's host and path for unix:// and unixs:// — with
// TLS (handshake and CRL check by etcd's TLS listener) for https:// and
// unixs:// (the handshake is made on the first read, by the protocol
// matcher). It returns the listener to multiplex, the tracking listener
// beneath (to close its connections) and the URL it serves.
func (n *Node) listenClient(raw string, info *transport.TLSInfo) (net.Listener, *trackingListener, string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, nil, "", fmt.Errorf("node: invalid client URL %q", raw)
	}
	addr := u.Host
	if u.Scheme == "unix" || u.Scheme == "unixs" {
		addr = u.Host + u.Path
	}
	l, err := transport.NewListenerWithOpts(addr, u.Scheme, transport.WithSkipTLSInfoCheck(true),
		transport.WithSocketOpts(&transport.SocketOpts{ReusePort: n.cfg.SocketReusePort, ReuseAddress: n.cfg.SocketReuseAddress}))
	if err != nil {
		return nil, nil, "", fmt.Errorf("node: listen on client URL %s: %w", raw, err)
	}
	tl := &trackingListener{Listener: l, conns: map[net.Conn]struct{}{}}
	bound := u.Scheme + "://" + l.Addr().String()
	if u.Scheme != "https" && u.Scheme != "unixs" {
		return tl, tl, bound, nil
	}
	cfg, err := clientServerConfig(info)
	if err != nil {
		_ = tl.Close()
		return nil, nil, "", fmt.Errorf("node: client URL %s: %w", raw, err)
	}
	return tls.NewListener(tl, cfg), tl, bound, nil
}

// clientServerConfig is the client URLs' TLS: etcd's server config for
// info, with its CRL check, and HTTP/1.1 for clients that offer it. gRPC
// clients offer HTTP/2 alone and get it; an HTTP client offering both is
// given HTTP/1.1, because HTTP/2 on a client port is taken for gRPC (the
// protocol matcher greets it with gRPC's settings).
func clientServerConfig(info *transport.TLSInfo) (*tls.Config, error) {
	cfg, err := info.ServerConfig()
	if err != nil {
		return nil, err
	}
	info.ConfigureCRLVerification(cfg)
	http1 := cfg.Clone()
	http1.NextProtos = []string{"http/1.1"}
	cfg.GetConfigForClient = func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		if slices.Contains(h.SupportedProtos, "http/1.1") {
			return http1, nil
		}
		return nil, nil
	}
	return cfg, nil
}

// tlsStateCreds are the gRPC servers' transport credentials: TLS, where
// there is any, was done by the listener (as etcd's listeners do it, before
// the protocol is matched), so the handshake here only finds the TLS
// connection under the matcher's and hands its state (the verified peer
// certificates) to the handlers; a connection without TLS is served as it
// is.
type tlsStateCreds struct{}

func (tlsStateCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if tc := tlsConnOf(c); tc != nil {
		return c, credentials.TLSInfo{State: tc.ConnectionState(),
			CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
	}
	return c, plainAuth{}, nil
}

func (tlsStateCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("node: server-side credentials only")
}

func (tlsStateCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}
func (tlsStateCreds) Clone() credentials.TransportCredentials { return tlsStateCreds{} }
func (tlsStateCreds) OverrideServerName(string) error         { return nil }

// plainAuth is a connection without TLS.
type plainAuth struct{}

func (plainAuth) AuthType() string { return "insecure" }
func (plainAuth) GetCommonAuthInfo() credentials.CommonAuthInfo {
	return credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}
}

// tlsConnOf finds the TLS connection under c (under cmux's), nil if none.
func tlsConnOf(c net.Conn) *tls.Conn {
	for {
		switch cc := c.(type) {
		case *tls.Conn:
			return cc
		case *cmux.MuxConn:
			c = cc.Conn
		default:
			return nil
		}
	}
}
