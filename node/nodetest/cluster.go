package nodetest

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/testport"
)

// Raft timings of every member: fast, so that elections take a fraction of
// a second.
const (
	heartbeat = 20 * time.Millisecond
	election  = 200 * time.Millisecond
)

// An Option changes how Start makes the cluster's members.
type Option func(*settings)

type settings struct {
	sharded       bool
	splits        [][]byte
	edits         []func(*node.Config)
	partitionable bool
	dir           string
}

// Sharded starts the members in sharded mode, the key space split into
// ranges at splitKeys (none: one range).
func Sharded(splitKeys ...string) Option {
	return func(s *settings) {
		s.sharded = true
		for _, k := range splitKeys {
			s.splits = append(s.splits, []byte(k))
		}
	}
}

// Edit changes each member's config after the harness has filled it in
// (name, data directory, URLs, timings, the options above), once per
// member, one member at a time. Several Edits apply in order.
func Edit(edit func(*node.Config)) Option {
	return func(s *settings) { s.edits = append(s.edits, edit) }
}

// Partitionable connects the members through an in-memory raft transport
// (dragonboat's chan transport) that Partition, CutOneWay and Heal can
// cut, instead of TCP.
func Partitionable() Option {
	return func(s *settings) { s.partitionable = true }
}

// DataDir is the data directory of a one-member cluster (default: a new
// temporary directory), e.g. one a backup was restored into.
func DataDir(dir string) Option {
	return func(s *settings) { s.dir = dir }
}

// Cluster is a set of in-process members started together, as one test
// sees them: For gives another test (a subtest sharing the members) its
// own Cluster of the same members.
type Cluster struct {
	tb testing.TB // fails on the harness's errors; its end closes the clients
	*members
}

// members are the nodes every Cluster of one Start shares.
//
// Invariant: len(cfgs) == len(nodes); nodes[i] is nil while member i is
// stopped.
type members struct {
	owner testing.TB // the test that started them: its end closes them
	set   settings
	net   *network // nil unless Partitionable
	cfgs  []node.Config
	nodes []*node.Node
}

// Start starts a cluster of size members and waits until each serves
// clients; it fails tb if one does not start.
func Start(tb testing.TB, size int, opts ...Option) *Cluster {
	tb.Helper()
	c := &Cluster{tb: tb, members: &members{owner: tb}}
	for _, o := range opts {
		o(&c.set)
	}
	if c.set.dir != "" && size != 1 {
		tb.Fatalf("nodetest: DataDir names the directory of a one-member cluster, not of %d", size)
	}
	if c.set.partitionable {
		c.net = &network{cut: map[[2]string]bool{}}
	}
	if size == 1 {
		dir := c.set.dir
		if dir == "" {
			dir = tb.TempDir()
		}
		cfg := c.config(node.Config{
			Name:             "test",
			DataDir:          dir,
			ListenClientURLs: []string{"http://127.0.0.1:0"},
			ListenPeerURLs:   []string{"http://127.0.0.1:0"},
		}, true)
		c.cfgs, c.nodes = []node.Config{cfg}, make([]*node.Node, 1)
		c.start(0, 30*time.Second)
		return c
	}
	var initial []string
	for i := range size {
		name, peer := fmt.Sprintf("m%d", i), "http://"+testport.Addr(tb)
		initial = append(initial, name+"="+peer)
		c.cfgs = append(c.cfgs, node.Config{Name: name, ListenPeerURLs: []string{peer}})
	}
	for i := range c.cfgs {
		c.cfgs[i] = c.config(node.Config{
			Name:                c.cfgs[i].Name,
			DataDir:             tb.TempDir(),
			ListenClientURLs:    []string{"http://127.0.0.1:0"},
			ListenPeerURLs:      c.cfgs[i].ListenPeerURLs,
			InitialCluster:      strings.Join(initial, ","),
			InitialClusterToken: "test-cluster",
		}, true)
	}
	c.nodes = make([]*node.Node, size)
	tb.Cleanup(c.closeAll)
	errs := make([]error, size)
	var wg sync.WaitGroup
	for i := range size {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			c.nodes[i], errs[i] = node.Start(ctx, c.cfgs[i])
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			tb.Fatalf("nodetest: start %s: %v", c.cfgs[i].Name, err)
		}
	}
	return c
}

// config fills in what every member shares: timings, the mode (the split
// keys only for founders), the transport and the edits.
func (c *Cluster) config(cfg node.Config, founder bool) node.Config {
	cfg.HeartbeatInterval, cfg.ElectionTimeout = heartbeat, election
	if c.set.sharded {
		cfg.Sharded = true
		if founder {
			cfg.InitialSplitKeys = append([][]byte(nil), c.set.splits...)
		}
	}
	if c.net != nil {
		cfg.RaftTransport = &transportFactory{net: c.net}
	}
	for _, edit := range c.set.edits {
		edit(&cfg)
	}
	return cfg
}

// start starts member i from its config.
func (c *Cluster) start(i int, timeout time.Duration) *node.Node {
	c.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	n, err := node.Start(ctx, c.cfgs[i])
	if err != nil {
		c.tb.Fatalf("nodetest: start %s: %v", c.cfgs[i].Name, err)
	}
	c.nodes[i] = n
	// Again for each start: the cleanup registered last runs first, before
	// the removal of a data directory made since the first.
	c.owner.Cleanup(c.closeAll)
	return n
}

// closeAll closes every running member, all at once, when the test that
// started them ends: a member's Close can wait seconds on a raft round
// that has lost its quorum to members closed before it, and closing them
// together lets those waits overlap instead of adding up. A node closed
// already (by an earlier closeAll) returns at once: Close is idempotent.
func (m *members) closeAll() {
	var wg sync.WaitGroup
	for _, n := range m.nodes {
		if n != nil {
			wg.Go(func() { _ = n.Close() })
		}
	}
	wg.Wait()
}

// For is c as test tb sees it: the same members (a Stop, Restart or Join
// through either shows in both), but the harness's failures are tb's and
// the clients it makes close when tb ends. It lets the subtests of the test
// that started c share its members; they still close when that test ends.
func (c *Cluster) For(tb testing.TB) *Cluster {
	return &Cluster{tb: tb, members: c.members}
}

// Size is the number of members, stopped ones included.
func (c *Cluster) Size() int { return len(c.nodes) }

// Node is member i's running node, nil while it is stopped.
func (c *Cluster) Node(i int) *node.Node { return c.nodes[i] }

// Nodes is every member's node, in member order (nil for a stopped one).
func (c *Cluster) Nodes() []*node.Node { return append([]*node.Node(nil), c.nodes...) }

// Config is the config member i was last started with.
func (c *Cluster) Config(i int) node.Config { return c.cfgs[i] }

// URLs lists the client URLs of every running member, in member order.
// A restarted member listens on new ones.
func (c *Cluster) URLs() []string {
	var urls []string
	for _, n := range c.nodes {
		if n != nil {
			urls = append(urls, n.ClientURLs()...)
		}
	}
	return urls
}

// Client is a new client of member i, closed when the test ends.
func (c *Cluster) Client(i int) *clientv3.Client {
	c.tb.Helper()
	if c.nodes[i] == nil {
		c.tb.Fatalf("nodetest: a client of member %d, which is stopped", i)
	}
	return NewClient(c.tb, c.nodes[i].ClientURLs()...)
}

// Clients is a new client of each member, in member order.
func (c *Cluster) Clients() []*clientv3.Client {
	c.tb.Helper()
	clis := make([]*clientv3.Client, len(c.nodes))
	for i := range c.nodes {
		clis[i] = c.Client(i)
	}
	return clis
}

// NewClient is a client of the given client URLs, closed when the test
// ends.
func NewClient(tb testing.TB, urls ...string) *clientv3.Client {
	tb.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: urls, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cli.Close() })
	return cli
}

// Stop closes member i's node and returns what Close returned. Its data
// directory stays, for Restart.
func (c *Cluster) Stop(i int) error {
	n := c.nodes[i]
	if n == nil {
		return nil
	}
	c.nodes[i] = nil
	return n.Close()
}

// Restart starts member i again (stopping it first if it runs) with its
// data directory and config, and returns its node. It fails the test if
// the node does not start within a minute.
func (c *Cluster) Restart(i int) *node.Node {
	c.tb.Helper()
	if err := c.Stop(i); err != nil {
		c.tb.Fatalf("nodetest: stop %s: %v", c.cfgs[i].Name, err)
	}
	return c.start(i, 60*time.Second)
}

// RestartWith is Restart with member i's config changed by edit first;
// the change stays for later restarts.
func (c *Cluster) RestartWith(i int, edit func(*node.Config)) *node.Node {
	c.tb.Helper()
	if err := c.Stop(i); err != nil {
		c.tb.Fatalf("nodetest: stop %s: %v", c.cfgs[i].Name, err)
	}
	edit(&c.cfgs[i])
	return c.start(i, 60*time.Second)
}

// Join starts a new member that the cluster has just added (MemberAdd or
// MemberAddAsLearner) as id at peer, members being the cluster's member
// list with it: it starts with --initial-cluster-state existing, in the
// cluster's mode, on its transport and with its edits, and is named m<n>
// for its member number n, which Join returns.
func (c *Cluster) Join(members []*pb.Member, id uint64, peer string) int {
	c.tb.Helper()
	i := len(c.nodes)
	name := fmt.Sprintf("m%d", i)
	var initial []string
	for _, m := range members {
		mname := m.Name
		if m.ID == id {
			mname = name
		}
		initial = append(initial, mname+"="+m.PeerURLs[0])
	}
	cfg := c.config(node.Config{
		Name:                name,
		DataDir:             c.owner.TempDir(), // lives as long as the members
		ListenClientURLs:    []string{"http://127.0.0.1:0"},
		ListenPeerURLs:      []string{peer},
		InitialCluster:      strings.Join(initial, ","),
		InitialClusterState: "existing",
		InitialClusterToken: "test-cluster",
	}, false)
	c.cfgs, c.nodes = append(c.cfgs, cfg), append(c.nodes, nil)
	c.start(i, 60*time.Second)
	return i
}

// MemberIndex is the number of the running member whose member id is id,
// as its Status reports it; it fails the test if none has it.
func (c *Cluster) MemberIndex(id uint64) int {
	c.tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, n := range c.nodes {
		if n == nil {
			continue
		}
		cli := c.Client(i)
		st, err := cli.Status(ctx, n.ClientURLs()[0])
		if err != nil {
			c.tb.Fatalf("nodetest: status of %s: %v", c.cfgs[i].Name, err)
		}
		if st.Header.MemberId == id {
			return i
		}
	}
	c.tb.Fatalf("nodetest: no running member has id %x", id)
	return -1
}

// raftAddr is member i's raft address: the host of its first peer URL.
func (c *Cluster) raftAddr(i int) string {
	c.tb.Helper()
	u, err := url.Parse(c.cfgs[i].ListenPeerURLs[0])
	if err != nil {
		c.tb.Fatalf("nodetest: peer URL of %s: %v", c.cfgs[i].Name, err)
	}
	return u.Host
}

func (c *Cluster) partitionable() {
	c.tb.Helper()
	if c.net == nil {
		c.tb.Fatal("nodetest: the cluster was not started Partitionable")
	}
}

// Partition cuts member i off from every other member, both ways: raft
// messages and snapshots between them are dropped until Heal.
func (c *Cluster) Partition(i int) {
	c.tb.Helper()
	c.partitionable()
	var others []string
	for j := range c.cfgs {
		if j != i {
			others = append(others, c.raftAddr(j))
		}
	}
	c.net.isolate(c.raftAddr(i), others)
}

// CutOneWay drops what member from sends to member to, and nothing else,
// until Heal.
func (c *Cluster) CutOneWay(from, to int) {
	c.tb.Helper()
	c.partitionable()
	c.net.cutOneWay(c.raftAddr(from), c.raftAddr(to))
}

// Heal restores every cut link.
func (c *Cluster) Heal() {
	c.tb.Helper()
	c.partitionable()
	c.net.heal()
}

// RangeReplicas has each range held by n members (node.Config.RangeReplicas).
func RangeReplicas(n int) Option {
	return Edit(func(c *node.Config) { c.RangeReplicas = n })
}

// PlacementReplicas has n members vote in the placement group
// (node.Config.PlacementReplicas).
func PlacementReplicas(n int) Option {
	return Edit(func(c *node.Config) { c.PlacementReplicas = n })
}
