package nodetest

import (
	"context"
	"errors"
	"sync"

	dbconfig "github.com/lni/dragonboat/v4/config"
	chantransport "github.com/lni/dragonboat/v4/plugin/chan"
	"github.com/lni/dragonboat/v4/raftio"
	raftpb "github.com/lni/dragonboat/v4/raftpb"
)

// network is dragonboat's in-memory transport with partitions: a message
// from a member cut off from its target is dropped, as a network would.
type network struct {
	mu  sync.Mutex
	cut map[[2]string]bool // guarded by mu; (from, to) raft addresses
}

// isolate cuts addr off from others, both ways.
func (n *network) isolate(addr string, others []string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, o := range others {
		n.cut[[2]string{addr, o}] = true
		n.cut[[2]string{o, addr}] = true
	}
}

// cutOneWay drops what from sends to, and nothing else.
func (n *network) cutOneWay(from, to string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cut[[2]string{from, to}] = true
}

func (n *network) heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.cut = map[[2]string]bool{}
}

func (n *network) dropped(from, to string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cut[[2]string{from, to}]
}

// transportFactory makes one member's transport on the network.
type transportFactory struct {
	net   *network
	inner chantransport.ChanTransportFactory
}

func (f *transportFactory) Create(cfg dbconfig.NodeHostConfig, h raftio.MessageHandler, ch raftio.ChunkHandler) raftio.ITransport {
	return &transport{ITransport: f.inner.Create(cfg, h, ch), self: cfg.RaftAddress, net: f.net}
}

func (f *transportFactory) Validate(string) bool { return true }

type transport struct {
	raftio.ITransport
	self string
	net  *network
}

func (t *transport) GetConnection(ctx context.Context, target string) (raftio.IConnection, error) {
	c, err := t.ITransport.GetConnection(ctx, target)
	if err != nil {
		return nil, err
	}
	return &connection{IConnection: c, from: t.self, to: target, net: t.net}, nil
}

func (t *transport) GetSnapshotConnection(ctx context.Context, target string) (raftio.ISnapshotConnection, error) {
	if t.net.dropped(t.self, target) {
		return nil, errors.New("partitioned")
	}
	return t.ITransport.GetSnapshotConnection(ctx, target)
}

type connection struct {
	raftio.IConnection
	from, to string
	net      *network
}

func (c *connection) SendMessageBatch(b raftpb.MessageBatch) error {
	if c.net.dropped(c.from, c.to) {
		return nil
	}
	return c.IConnection.SendMessageBatch(b)
}
