package placement

import (
	"encoding/binary"
	"encoding/hex"
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
// URL of the replica's member. The peer URLs are the ones the cluster has
// recorded for the member (MemberAdd, MemberUpdate, the member's own on
// first start: Record), else the --initial-cluster entry they derive from
// (Seed). Recorded URLs are what let a member move: MemberUpdate records
// the new ones, every member dials them from then on, and the member
// restarts listening there.
//
// dragonboat names a replica in its membership by a target that, with a
// registry, must look like a NodeHost id (a UUID); Cairn's is derived from
// the member id (MemberTarget) and only names the member. The registry
// learns a replica's member from the targets dragonboat hands to Add, and
// remembers it per (shard, replica) until Remove or RemoveShard. dragonboat
// calls Add for a shard's initial members when the replica starts
// (founders, from its bootstrap record, also on every restart), for the
// membership of every snapshot it recovers (on start too), for every
// membership change it applies (log replay on restart included), and for
// the sender of every message it receives — with the sender NodeHost's id
// as target, which names a member only when the NodeHost id is the
// member's MemberTarget (a random NodeHost id is ignored).
//
// A replica nothing was added for resolves through the MemberOf function
// set by SetMemberOf (the range map's pairs, once ranges name them), else
// as replica id = member id: the placement group's replicas, and every
// replica of a cluster whose ranges were founded before replica ids were
// allocated apart from member ids. A replica that joins a shard needs
// MemberOf (or member-shaped NodeHost ids) to answer the shard's leader
// before a snapshot or a replayed membership change has added it.
// Safe for concurrent use.
type PeerRegistry struct {
	mu       sync.RWMutex
	seeds    map[NodeID]string      // from --initial-cluster, for every join generation
	records  map[NodeID]string      // recorded by the cluster
	replicas map[peerReplica]NodeID // a replica's member, from dragonboat's targets
	memberOf func(shardID, replicaID uint64) (NodeID, bool)
	streams  uint64
}

// peerReplica names one replica of one shard, as dragonboat does.
type peerReplica struct{ shard, replica uint64 }

// NewPeerRegistry returns an empty registry.
func NewPeerRegistry() *PeerRegistry {
	return &PeerRegistry{seeds: map[NodeID]string{}, records: map[NodeID]string{},
		replicas: map[peerReplica]NodeID{}, streams: 1}
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

// Close implements raftio.INodeRegistry.
func (r *PeerRegistry) Close() error { return nil }

// Add implements raftio.INodeRegistry: replica replicaID of shardID is on
// the member target names (MemberTarget). A target that names no member
// (the random NodeHost id of a message's sender) changes nothing.
func (r *PeerRegistry) Add(shardID, replicaID uint64, target string) {
	member, ok := ParseMemberTarget(target)
	if !ok {
		return
	}
	k := peerReplica{shardID, replicaID}
	// The transport adds the sender of every message it receives: the
	// common case is a replica already known on the same member.
	r.mu.RLock()
	known, found := r.replicas[k]
	r.mu.RUnlock()
	if found && known == member {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.replicas[k] = member
}

// Remove implements raftio.INodeRegistry: forget replica replicaID of
// shardID (it left the shard).
func (r *PeerRegistry) Remove(shardID, replicaID uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.replicas, peerReplica{shardID, replicaID})
}

// RemoveShard implements raftio.INodeRegistry: forget every replica of
// shardID (this member's replica left it).
func (r *PeerRegistry) RemoveShard(shardID uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.replicas {
		if k.shard == shardID {
			delete(r.replicas, k)
		}
	}
}

// Resolve implements raftio.INodeRegistry: the address of the replica's
// member (replica id = member id if no target was added for it) and the
// key of the connection dragonboat multiplexes its messages on (one per
// member address and stream).
func (r *PeerRegistry) Resolve(shardID, replicaID uint64) (string, string, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	member := r.memberLocked(shardID, replicaID)
	addr, ok := r.memberAddrLocked(member)
	if !ok {
		return "", "", fmt.Errorf("%w %x (member %x)", ErrUnknownPeer, replicaID, uint64(member))
	}
	return addr, fmt.Sprintf("%s-%d", addr, shardID%r.streams), nil
}

// Member returns the member holding replica replicaID of shardID, as
// Resolve finds it: from dragonboat's targets, else MemberOf, else the
// member whose id is replicaID.
func (r *PeerRegistry) Member(shardID, replicaID uint64) NodeID {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.memberLocked(shardID, replicaID)
}

// REQUIRES: r.mu (read).
func (r *PeerRegistry) memberLocked(shardID, replicaID uint64) NodeID {
	if member, ok := r.replicas[peerReplica{shardID, replicaID}]; ok {
		return member
	}
	if r.memberOf != nil {
		if member, ok := r.memberOf(shardID, replicaID); ok {
			return member
		}
	}
	return NodeID(replicaID)
}

// SetMemberOf sets where a replica nothing was added for is looked up
// before falling back to replica id = member id (nil: nowhere). f is
// called under the registry's read lock, from dragonboat's transport: it
// must not block nor call the registry.
func (r *PeerRegistry) SetMemberOf(f func(shardID, replicaID uint64) (NodeID, bool)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.memberOf = f
}

// MemberAddr is member id's peer address (host:port): the first URL the
// cluster recorded for it, else its seed.
func (r *PeerRegistry) MemberAddr(id NodeID) (string, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.memberAddrLocked(id)
}

// REQUIRES: r.mu (read).
func (r *PeerRegistry) memberAddrLocked(id NodeID) (string, bool) {
	if addr, ok := r.records[id]; ok {
		return addr, true
	}
	addr, ok := r.seeds[id]
	return addr, ok
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

// memberTargetSuffix ends every MemberTarget: a random (version 4)
// NodeHost id never has it, its fourth group carries the variant bits.
const memberTargetSuffix = "-0000-000000000000"

// ParseMemberTarget is the inverse of MemberTarget: the member a target
// names, false if it names none (another shape, or member 0).
func ParseMemberTarget(target string) (NodeID, bool) {
	if len(target) != 36 || target[8] != '-' || target[13] != '-' || target[18:] != memberTargetSuffix {
		return 0, false
	}
	b, err := hex.DecodeString(target[0:8] + target[9:13] + target[14:18])
	if err != nil {
		return 0, false
	}
	id := NodeID(binary.BigEndian.Uint64(b))
	return id, id != 0
}
