package node

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/soheilhy/cmux"
	"go.etcd.io/etcd/client/pkg/v3/tlsutil"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/cairn-kv/cairn/placement"
	"github.com/cairn-kv/cairn/shard"
)

// The peer port. Cairn binds the (first) peer URL itself and tells its
// connections apart by their first bytes:
//
//	gRPC (HTTP/2; with peer TLS, a TLS ClientHello offering ALPN "h2")
//	    → the peer gRPC server: the node-to-node service and the Lease
//	      service for forwarded lease calls (router.RegisterPeer), with TLS
//	      ended here by etcd's TLS listener (CA, allowed CN or host name,
//	      CRL) and every call admitted by peerGate;
//	anything else
//	    → raft: copied byte for byte to dragonboat's transport, which
//	      listens on a loopback port of its own
//	      (NodeHostConfig.ListenAddress; the advertised RaftAddress stays
//	      the peer URL). With raft TLS (peerSide.loop), TLS is ended here
//	      too, by etcd's TLS listener with the same checks as the gRPC
//	      server's, and the plain bytes are sent on over a TLS connection
//	      of this member's own to dragonboat's listener: dragonboat's
//	      MutualTLS checks the CA alone (no allowed CN or host name, no
//	      CRL, no versions or cipher suites), and cannot be given more.
//
// Dragonboat's transport dials the other members' peer URLs as before, so
// raft messages reach the others' dragonboat through their peer ports.

// peerSide is the peer port's TLS as this node runs it.
type peerSide struct {
	// info is the peer TLS (nil: the peer URL is http://).
	info *transport.TLSInfo
	// certified: the peer port requires and verifies a certificate of
	// whoever connects (a trusted CA or --peer-client-cert-auth), so a
	// caller that reaches the gRPC server is authenticated by it.
	certified bool
	// raftTLS: dragonboat's transport runs mutual TLS with the peer files.
	raftTLS bool
	// loop is, with raftTLS, the TLS proxyRaft dials dragonboat's
	// loopback listener with: this member's peer certificate, and the
	// listener's (this member's own) verified against the CA.
	loop *tls.Config
}

// peerTLS sets up the peer side from the configuration.
func (n *Node) peerTLS() (peerSide, error) {
	cfg := n.cfg
	var ps peerSide
	if schemeOf(cfg.ListenPeerURLs[0]) != "https" {
		if !cfg.PeerTLS.empty() || cfg.PeerTLS.AutoTLS {
			n.log.Warn("scheme is http while peer TLS is configured; ignoring it", "peer-url", cfg.ListenPeerURLs[0])
		}
		return ps, nil
	}
	var hosts []string
	for _, raw := range cfg.ListenPeerURLs {
		u, _ := url.Parse(raw)
		hosts = append(hosts, u.Host)
	}
	info, err := n.tlsInfo(cfg.PeerTLS, filepath.Join(cfg.DataDir, "fixtures", "peer"), hosts)
	if err != nil {
		return ps, err
	}
	ps.info = info
	ps.certified = info.TrustedCAFile != "" || info.ClientCertAuth
	ps.raftTLS = !cfg.PeerTLS.empty() && info.TrustedCAFile != ""
	if ps.raftTLS {
		if ps.loop, err = loopTLS(cfg.PeerTLS); err != nil {
			return ps, err
		}
	} else {
		n.log.Warn("raft traffic between members is not encrypted: dragonboat's transport runs TLS only with --peer-cert-file, --peer-key-file and --peer-trusted-ca-file",
			"peer-url", cfg.ListenPeerURLs[0])
	}
	return ps, nil
}

// loopTLS is the TLS config proxyRaft dials dragonboat's loopback
// listener with (peerSide.loop). That listener serves this member's peer
// certificate, valid for its peer URL's host and not, as a rule, for
// 127.0.0.1, so the certificate is verified against the CA without a host
// name.
func loopTLS(side TLS) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(side.CertFile, side.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("node: peer TLS: %w", err)
	}
	roots, err := tlsutil.NewCertPool([]string{side.TrustedCAFile})
	if err != nil {
		return nil, fmt.Errorf("node: peer TLS: %w", err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		// Verified below, without a host name.
		InsecureSkipVerify: true, //nolint:gosec // VerifyConnection verifies the chain
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("node: raft loopback listener sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			return err
		},
	}, nil
}

// listenPeer binds the peer port at addr and starts sending raft's
// connections to dragonboat's loopback listener (n.raftLoop, read per
// connection); it returns the listener the peer gRPC server is to serve.
func (n *Node) listenPeer(addr string) (net.Listener, error) {
	l, err := n.listenTCP(addr)
	if err != nil {
		return nil, fmt.Errorf("node: listen on peer URL %s: %w", n.cfg.ListenPeerURLs[0], err)
	}
	tl := &trackingListener{Listener: l, conns: map[net.Conn]struct{}{}}
	n.listeners = append(n.listeners, tl)
	m := cmux.New(tl)
	n.muxes = append(n.muxes, m)
	var grpcL net.Listener
	if n.peer.info != nil {
		grpcL, err = transport.NewTLSListener(m.Match(offersH2), n.peer.info)
		if err != nil {
			return nil, fmt.Errorf("node: peer URL %s: %w", n.cfg.ListenPeerURLs[0], err)
		}
	} else {
		grpcL = m.Match(cmux.HTTP2())
	}
	raftL := m.Match(cmux.Any())
	if n.peer.loop != nil {
		if raftL, err = transport.NewTLSListener(raftL, n.peer.info); err != nil {
			return nil, fmt.Errorf("node: peer URL %s: %w", n.cfg.ListenPeerURLs[0], err)
		}
	}
	n.wg.Add(2)
	go func() { defer n.wg.Done(); _ = m.Serve() }()
	go func() { defer n.wg.Done(); n.proxyRaft(raftL) }()
	return grpcL, nil
}

// offersH2 matches a TLS ClientHello that offers HTTP/2 by ALPN, as gRPC's
// does and dragonboat's does not.
func offersH2(r io.Reader) bool {
	var protos []string
	errSeen := errors.New("seen")
	srv := tls.Server(readOnlyConn{r: bufio.NewReader(r)}, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			protos = h.SupportedProtos
			return nil, errSeen
		},
	})
	_ = srv.Handshake()
	return slices.Contains(protos, "h2")
}

// readOnlyConn lets crypto/tls read a ClientHello from r; what it writes
// (an alert) goes nowhere.
type readOnlyConn struct {
	net.Conn // nil: only the methods below are called
	r        io.Reader
}

func (c readOnlyConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c readOnlyConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c readOnlyConn) Close() error                     { return nil }
func (c readOnlyConn) SetDeadline(time.Time) error      { return nil }
func (c readOnlyConn) SetReadDeadline(time.Time) error  { return nil }
func (c readOnlyConn) SetWriteDeadline(time.Time) error { return nil }
func (c readOnlyConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c readOnlyConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }

// proxyRaft copies each connection l accepts to and from a connection to
// dragonboat's loopback listener (over TLS with n.peer.loop) until either
// side ends; it returns once l is closed. Close ends the accepted
// connections (the tracking listener's), which ends the copies.
func (n *Node) proxyRaft(l net.Listener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			d, err := n.dialRaftLoop()
			if err != nil {
				return
			}
			defer d.Close()
			done := make(chan struct{})
			go func() {
				_, _ = io.Copy(d, c)
				_ = d.Close()
				close(done)
			}()
			_, _ = io.Copy(c, d)
			_ = c.Close()
			<-done
		}()
	}
}

// dialRaftLoop connects to dragonboat's loopback listener, with TLS if
// raft runs it.
func (n *Node) dialRaftLoop() (net.Conn, error) {
	d, err := net.DialTimeout("tcp", *n.raftLoop.Load(), 5*time.Second)
	if err != nil || n.peer.loop == nil {
		return d, err
	}
	tc := tls.Client(d, n.peer.loop)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = d.Close()
		return nil, err
	}
	return tc, nil
}

// peerCreds are the credentials this node dials the others' peer ports
// with (router.MemberConns): the peer TLS client's, nil without peer TLS.
func (n *Node) peerCreds() (credentials.TransportCredentials, error) {
	if n.peer.info == nil {
		return nil, nil
	}
	cfg, err := n.peer.info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("node: peer TLS client: %w", err)
	}
	return credentials.NewTLS(cfg), nil
}

// peerAddr is member id's peer address (router.MemberConns).
func (n *Node) peerAddr(id placement.NodeID) (string, error) {
	if addr, ok := n.peers.MemberAddr(id); ok {
		return addr, nil
	}
	// As a leader not known yet: the callers try again.
	return "", fmt.Errorf("node: no peer address known for member %x: %w", uint64(id), shard.ErrNoLeader)
}

// newPeerServer makes the peer port's gRPC server (router.RegisterPeer
// registers on it).
func (n *Node) newPeerServer(opts []grpc.ServerOption) *grpc.Server {
	return grpc.NewServer(append(opts, grpc.Creds(tlsStateCreds{}))...)
}

// peerGate admits to the peer gRPC server the callers that are members:
// with a certified peer port, any caller (its certificate was verified
// when it connected, and only members are given certificates); otherwise
// a caller whose address is the host of a current member's peer URL.
// Every forwarded request is a call, so an address once admitted is
// remembered for as long as the membership it was admitted under is the
// member's view (no URL parsing or name lookup per call).
type peerGate struct {
	n *Node
	// admitted maps a caller's IP (string) to the *membersView it was
	// admitted under.
	admitted *sync.Map
}

func newPeerGate(n *Node) peerGate { return peerGate{n: n, admitted: &sync.Map{}} }

func (g peerGate) Admit(p *peer.Peer) error {
	if g.n.peer.certified {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
			return nil
		}
		return errors.New("no verified peer certificate")
	}
	ip := addrIP(p.Addr)
	if ip == nil {
		return fmt.Errorf("caller %v has no IP address", p.Addr)
	}
	key := ip.String()
	if v, ok := g.admitted.Load(key); ok && v == g.n.membersView.Load() {
		return nil
	}
	members, err := g.n.Members(false)
	if err != nil {
		return fmt.Errorf("membership not known: %v", err)
	}
	view := g.n.membersView.Load()
	defer func() {
		if view != nil {
			g.admitted.Store(key, view)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, m := range members {
		for _, raw := range m.PeerURLs {
			if hostIs(ctx, raw, ip) {
				return nil
			}
		}
	}
	view = nil // not admitted: nothing remembered
	return fmt.Errorf("caller %v is not a member of this cluster", p.Addr)
}

// addrIP is a's IP address (nil if a is not an IP address).
func addrIP(a net.Addr) net.IP {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.IP
	case nil:
		return nil
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return nil
	}
	return net.ParseIP(host)
}

// hostIs reports whether the host of peer URL raw is, or resolves to, ip.
func hostIs(ctx context.Context, raw string, ip net.IP) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return false
	}
	host := u.Hostname()
	if hip := net.ParseIP(host); hip != nil {
		return hip.Equal(ip)
	}
	addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(addrs, func(a net.IPAddr) bool { return a.IP.Equal(ip) })
}

// PeerURLs returns this member's advertised peer URLs (its raft address
// and peer gRPC service, at the first).
func (n *Node) PeerURLs() []string { return append([]string(nil), n.peerURLs...) }
