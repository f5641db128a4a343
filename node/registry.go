package node

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	dbconfig "github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/raftio"
)

// peerRegistry tells dragonboat's transport where each replica is: at the
// first peer URL of the member whose id is the replica id. The peer URLs are
// the ones the group has recorded for the member (MemberAdd, MemberUpdate,
// the member's own on first start), else the --initial-cluster entry they
// derive from. Replicated URLs are what let a member move: MemberUpdate
// records the new ones, every member dials them from then on, and the member
// restarts listening there.
//
// dragonboat names a replica in its membership by a target that, with a
// registry, must look like a NodeHost id (a UUID); Cairn's is derived from
// the member id (memberTarget) and only names the member.
type peerRegistry struct {
	mu      sync.RWMutex
	seeds   map[uint64]string // from --initial-cluster, for every join generation
	records map[uint64]string // recorded by the group
	streams uint64
}

func newPeerRegistry() *peerRegistry {
	return &peerRegistry{seeds: map[uint64]string{}, records: map[uint64]string{}, streams: 1}
}

var errUnknownPeer = errors.New("node: no peer URL known for the replica")

// Create implements dbconfig.NodeRegistryFactory: every NodeHost the node
// creates (a join may create several) shares the one registry.
func (r *peerRegistry) Create(_ string, streams uint64, _ dbconfig.TargetValidator) (raftio.INodeRegistry, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.streams = max(streams, 1)
	return r, nil
}

// Close, Add, Remove and RemoveShard implement raftio.INodeRegistry:
// addresses come from peer URLs, not from dragonboat's targets.
func (r *peerRegistry) Close() error              { return nil }
func (r *peerRegistry) Add(_, _ uint64, _ string) {}
func (r *peerRegistry) Remove(_, _ uint64)        {}
func (r *peerRegistry) RemoveShard(uint64)        {}

// Resolve implements raftio.INodeRegistry: the address of replica's member
// and the key of the connection dragonboat multiplexes its messages on.
func (r *peerRegistry) Resolve(shardID, replicaID uint64) (string, string, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	addr, ok := r.records[replicaID]
	if !ok {
		addr, ok = r.seeds[replicaID]
	}
	if !ok {
		return "", "", fmt.Errorf("%w %x", errUnknownPeer, replicaID)
	}
	return addr, fmt.Sprintf("%s-%d", addr, shardID%r.streams), nil
}

// seed adds a member known from --initial-cluster.
func (r *peerRegistry) seed(id uint64, addr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seeds[id] = addr
}

// record takes the peer URLs the group recorded for member id.
func (r *peerRegistry) record(id uint64, peerURLs []string) {
	if len(peerURLs) == 0 {
		return
	}
	addr, err := hostPort(peerURLs[0])
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records[id] = addr
}

// memberTarget is the target naming member id in dragonboat's membership:
// the id laid out as a UUID, as a registry requires.
func memberTarget(id uint64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], id)
	return fmt.Sprintf("%x-%x-%x-0000-000000000000", b[0:4], b[4:6], b[6:8])
}

// seedPeers adds the members of --initial-cluster to the registry under
// every id a join generation may have given them.
func (n *Node) seedPeers(members []initialMember) {
	for _, m := range members {
		addr, err := hostPort(m.peerURLs[0])
		if err != nil {
			continue
		}
		for gen := range maxJoinGenerations {
			n.peers.seed(memberIDGen(m.peerURLs, n.token, gen), addr)
		}
	}
}
