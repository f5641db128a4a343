package node_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/credentials"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// raftProbe opens a raft connection (TLS without ALPN, which the peer port
// sends to raft) to peer (host:port) with cfg and sends dragonboat's
// "poison" magic number, which its transport answers with the same two
// bytes before it closes the connection. It returns nil if that answer
// came (raft admitted the connection), else the error that ended the
// connection first (the handshake's, a TLS alert, EOF).
func raftProbe(t *testing.T, peer string, cfg *tls.Config) error {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", peer, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write([]byte{0, 0}); err != nil {
		return err
	}
	ack := make([]byte, 2)
	if _, err := io.ReadFull(conn, ack); err != nil {
		return err
	}
	if !bytes.Equal(ack, []byte{0, 0}) {
		return fmt.Errorf("raft answered %x, want its poison ack 0000", ack)
	}
	return nil
}

// TestPeerCertAllowedHostname: under --peer-cert-allowed-hostname, a
// certificate of the cluster's CA is admitted to the peer port — the
// node-to-node service and raft — only if it is valid for one of the
// allowed host names (a DNS name or an IP address), whatever its common
// name. The three members, each with its own common name and a
// certificate valid for the allowed DNS name, serve writes and reads
// through every member (raft among them, forwarded calls between them); a
// caller with a member's common name and a certificate valid for
// 127.0.0.1 and localhost only is refused by both, and callers with other
// common names and a certificate valid for an allowed name or IP are
// served.
func TestPeerCertAllowedHostname(t *testing.T) {
	const allowedDNS, allowedIP = "peers.cairn.test", "10.11.12.13"
	ca := nodetest.NewCA(t, "cluster")
	certs := map[string][2]string{}
	for _, name := range []string{"m0", "m1", "m2"} {
		// 127.0.0.1: the members dial each other's peer URLs by it.
		cert, key := ca.IssueFor(t, name, allowedDNS, "127.0.0.1")
		certs[name] = [2]string{cert, key}
	}
	intruderCert, intruderKey := ca.IssueFor(t, "m0", "127.0.0.1", "localhost")
	byNameCert, byNameKey := ca.IssueFor(t, "operator", allowedDNS)
	byIPCert, byIPKey := ca.IssueFor(t, "operator", allowedIP)
	c := nodetest.Start(t, 3, nodetest.Sharded("m"), nodetest.Edit(func(cfg *node.Config) {
		for i, u := range cfg.ListenPeerURLs {
			cfg.ListenPeerURLs[i] = strings.Replace(u, "http://", "https://", 1)
		}
		cfg.InitialCluster = strings.ReplaceAll(cfg.InitialCluster, "http://", "https://")
		own, ok := certs[cfg.Name]
		if !ok {
			t.Fatalf("no certificate for member %q", cfg.Name)
		}
		cfg.PeerTLS = node.TLS{CertFile: own[0], KeyFile: own[1], TrustedCAFile: ca.CAFile, ClientCertAuth: true,
			AllowedHostnames: []string{allowedDNS, allowedIP}}
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, cli := range c.Clients() {
		for _, k := range []string{"a", "z"} {
			if _, err := cli.Put(ctx, k, "v"+k); err != nil {
				t.Fatalf("put %s through member %d: %v", k, i, err)
			}
		}
	}
	for i, cli := range c.Clients() {
		if r, err := cli.Get(ctx, "", clientv3.WithPrefix()); err != nil || len(r.Kvs) != 2 {
			t.Fatalf("get through member %d: %v %v", i, r, err)
		}
	}

	for i := range c.Size() {
		peer := hostOf(t, c.Node(i).PeerURLs()[0])
		for name, cfg := range map[string]*tls.Config{
			"a certificate valid for the allowed DNS name": clientTLS(t, ca.CAFile, byNameCert, byNameKey),
			"a certificate valid for the allowed IP":       clientTLS(t, ca.CAFile, byIPCert, byIPKey),
		} {
			if err := internalCall(t, peer, credentials.NewTLS(cfg), nil); err != nil {
				t.Errorf("member %d's peer port, %s: node-to-node call refused: %v", i, name, err)
			}
			if err := raftProbe(t, peer, cfg); err != nil {
				t.Errorf("member %d's peer port, %s: raft connection refused: %v", i, name, err)
			}
		}
		intruder := clientTLS(t, ca.CAFile, intruderCert, intruderKey)
		if err := internalCall(t, peer, credentials.NewTLS(intruder), nil); err == nil {
			t.Errorf("member %d's peer port, a member's common name without an allowed host name: node-to-node call served, want refused", i)
		}
		if err := raftProbe(t, peer, intruder); err == nil || !strings.Contains(err.Error(), "bad certificate") {
			t.Errorf("member %d's peer port, a member's common name without an allowed host name: raft connection: %v, want refused (bad certificate)", i, err)
		}
	}
}
