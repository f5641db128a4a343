package placement

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"

	dbconfig "github.com/lni/dragonboat/v4/config"
	"github.com/lni/dragonboat/v4/raftio"
)

// PeerRegistry is the node registry (DESIGN.md "Parts": placement's): it
// tells dragonboat's transport where each replica is — at the first peer
// URL of the member whose id is the replica id. The peer URLs are the ones
// the cluster has recorded for the member (MemberAdd, MemberUpdate, the
// member's own on first start: Record), else the --initial-cluster entry
// they derive from (Seed). Recorded URLs are what let a member move:
// MemberUpdate records the new ones, every member dials them from then on,
// and the member restarts listening there.
//
// dragonboat names a replica in its membership by a target that, with a
// registry, must look like a NodeHost id (a UUID); Cairn's is derived from
// the member id (MemberTarget) and only names the member. Safe for
// concurrent use.
type PeerRegistry struct {
	mu      sync.RWMutex
	seeds   map[NodeID]string // from --initial-cluster, for every join generation
	records map[NodeID]string // recorded by the cluster
	streams uint64
}

// NewPeerRegistry returns an empty registry.
func NewPeerRegistry() *PeerRegistry {
	return &PeerRegistry{seeds: map[NodeID]string{}, records: map[NodeID]string{}, streams: 1}
}

// ErrUnknownPeer: no peer URL is known for a replica's member.
var ErrUnknownPeer = errors.New("placement: no peer URL known for the replica")

// Create implements dbconfig.NodeRegistryFactory: every NodeHost a member
// creates (a join may create several) shares the one registry.
func (r *PeerRegistry) Create(_ string, streams uint64, _ dbconfig.TargetValidator) (raftio.INodeRegistry, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.streams = max(streams, 1)
	return r, nil
}

// Close, Add, Remove and RemoveShard implement raftio.INodeRegistry:
// addresses come from peer URLs, not from dragonboat's targets.
func (r *PeerRegistry) Close() error              { return nil }
func (r *PeerRegistry) Add(_, _ uint64, _ string) {}
func (r *PeerRegistry) Remove(_, _ uint64)        {}
func (r *PeerRegistry) RemoveShard(uint64)        {}

// Resolve implements raftio.INodeRegistry: the address of the replica's
// member and the key of the connection dragonboat multiplexes its messages
// on (one per member and stream).
func (r *PeerRegistry) Resolve(shardID, replicaID uint64) (string, string, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	addr, ok := r.records[NodeID(replicaID)]
	if !ok {
		addr, ok = r.seeds[NodeID(replicaID)]
	}
	if !ok {
		return "", "", fmt.Errorf("%w %x", ErrUnknownPeer, replicaID)
	}
	return addr, fmt.Sprintf("%s-%d", addr, shardID%r.streams), nil
}

// Seed adds member id's address as --initial-cluster gives it (host:port).
func (r *PeerRegistry) Seed(id NodeID, addr string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seeds[id] = addr
}

// Record takes the peer URLs the cluster recorded for member id; the first
// one wins over a seed. URLs that do not parse are ignored.
func (r *PeerRegistry) Record(id NodeID, peerURLs []string) {
	if len(peerURLs) == 0 {
		return
	}
	u, err := url.Parse(peerURLs[0])
	if err != nil {
		return
	}
	if _, _, err := net.SplitHostPort(u.Host); err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.records[id] = u.Host
}

// MemberTarget is the target naming member id in dragonboat's membership:
// the id laid out as a UUID, as a registry requires.
func MemberTarget(id NodeID) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(id))
	return fmt.Sprintf("%x-%x-%x-0000-000000000000", b[0:4], b[4:6], b[6:8])
}
