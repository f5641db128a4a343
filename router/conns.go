package router

import (
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cairn-kv/cairn/placement"
)

// MemberConns dials the other members' peer ports (the node-to-node
// service, and etcd's Lease service for the lease requests only a leader
// answers; RegisterPeer), with the peer port's transport credentials: one
// connection per address, kept until Close.
//
// Concurrency: safe for concurrent use; mu guards conns.
type MemberConns struct {
	// addr finds a member's peer address (host:port).
	addr  func(member placement.NodeID) (string, error)
	creds credentials.TransportCredentials
	mu    sync.Mutex
	conns map[string]*grpc.ClientConn // REQUIRES: mu
}

// reconnect is how a connection to a member that went away tries again:
// every 100 ms at first, growing to at most a second (gRPC's default grows
// to two minutes), so that a member that comes back is reached within
// about a second, as etcd's peers reach each other.
var reconnect = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
	MinConnectTimeout: 5 * time.Second,
}

// NewMemberConns returns the connections to the members that addr finds,
// made with creds (the peer TLS client's); nil creds dial without TLS.
func NewMemberConns(addr func(member placement.NodeID) (string, error), creds credentials.TransportCredentials) *MemberConns {
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	return &MemberConns{addr: addr, creds: creds}
}

// Conn returns a connection to member's peer address.
func (c *MemberConns) Conn(member placement.NodeID) (*grpc.ClientConn, error) {
	target, err := c.addr(member)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cc := c.conns[target]; cc != nil {
		return cc, nil
	}
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(c.creds), grpc.WithConnectParams(reconnect))
	if err != nil {
		return nil, fmt.Errorf("router: dial member %x at %s: %w", uint64(member), target, err)
	}
	if c.conns == nil {
		c.conns = map[string]*grpc.ClientConn{}
	}
	c.conns[target] = cc
	return cc, nil
}

// Dial is Conn as a Dial.
func (c *MemberConns) Dial(member placement.NodeID) (grpc.ClientConnInterface, error) {
	return c.Conn(member)
}

// Close closes the connections made so far.
func (c *MemberConns) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cc := range c.conns {
		_ = cc.Close()
	}
	c.conns = nil
}
