package node

import (
	"context"
	"crypto/sha1"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lni/dragonboat/v4"
)

// Founding and joining: etcd's --initial-cluster, member and cluster ids,
// and the search for a joining member's id.

// defaultClusterToken is etcd's default --initial-cluster-token.
const defaultClusterToken = "etcd-cluster"

// initialMember is one entry of --initial-cluster.
type initialMember struct {
	name     string
	peerURLs []string
	id       uint64
}

// parseInitialCluster reads etcd's name=url[,name=url...] list; a name may
// appear several times, once per peer URL.
func parseInitialCluster(s, token string) ([]initialMember, error) {
	byName := map[string]*initialMember{}
	var order []string
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, u, ok := strings.Cut(part, "=")
		if !ok || name == "" || u == "" {
			return nil, fmt.Errorf("node: --initial-cluster entry %q: want name=peer-url", part)
		}
		if _, err := hostPort(u); err != nil {
			return nil, fmt.Errorf("node: --initial-cluster: %w", err)
		}
		m := byName[name]
		if m == nil {
			m = &initialMember{name: name}
			byName[name] = m
			order = append(order, name)
		}
		m.peerURLs = append(m.peerURLs, u)
	}
	if len(order) == 0 {
		return nil, fmt.Errorf("node: --initial-cluster is empty")
	}
	out := make([]initialMember, 0, len(order))
	seen := map[uint64]string{}
	for _, name := range order {
		m := *byName[name]
		m.id = memberID(m.peerURLs, token)
		if other, dup := seen[m.id]; dup {
			return nil, fmt.Errorf("node: --initial-cluster members %q and %q have the same peer URLs", other, name)
		}
		seen[m.id] = name
		out = append(out, m)
	}
	return out, nil
}

// memberID derives a member's id, as etcd does in spirit, from its sorted
// peer URLs and the cluster token: the same flags give the same id on every
// member. The id doubles as the member's raft replica id, so it is never 0.
func memberID(peerURLs []string, token string) uint64 {
	urls := slices.Clone(peerURLs)
	slices.Sort(urls)
	sum := sha1.Sum([]byte(strings.Join(urls, "") + token))
	if id := binary.BigEndian.Uint64(sum[:8]); id != 0 {
		return id
	}
	return 1
}

// clusterIDFor names the cluster by its token, so that every member —
// founders and those that join later — reports the same id.
func clusterIDFor(token string) uint64 {
	sum := sha1.Sum([]byte("cairn-cluster/" + token))
	return binary.BigEndian.Uint64(sum[:8])
}

// maxJoinGenerations bounds how many ids a joining member tries: one more
// than the times its peer URLs were removed from the cluster.
const maxJoinGenerations = 16

// memberIDGen is the id MemberAdd gives peer URLs whose earlier ids
// (generations 0..gen-1) are taken or were removed: raft never takes a
// removed id back, so a member removed and added again gets a new one.
// Generation 0 is the founders' id.
func memberIDGen(peerURLs []string, token string, gen int) uint64 {
	if gen == 0 {
		return memberID(peerURLs, token)
	}
	return memberID(peerURLs, token+"/"+strconv.Itoa(gen))
}

// join starts this member's replica as one added to an existing cluster.
// Its id is the first generation of its peer URLs' ids that the cluster's
// leader contacts: an id the cluster does not have (taken earlier, removed)
// never hears from a leader, and is stopped and the next one tried.
func (n *Node) join(ctx context.Context, shardID uint64, start func(id uint64) error) error {
	probe := max(10*n.cfg.ElectionTimeout, 3*time.Second)
	for gen := range maxJoinGenerations {
		id := memberIDGen(n.peerURLs, n.token, gen)
		if err := start(id); err != nil {
			return err
		}
		if n.heardLeader(ctx, shardID, probe) {
			n.memberID = id
			return writeMemberID(n.cfg.DataDir, id)
		}
		if ctx.Err() != nil {
			return fmt.Errorf("node: joining the cluster: %w", ctx.Err())
		}
		// Start over with a fresh NodeHost: dragonboat cannot restart a
		// shard under another replica id in the same NodeHost, and this
		// member has no raft state worth keeping yet.
		n.nh.Close()
		if err := os.RemoveAll(n.nhConfig.NodeHostDir); err != nil {
			return fmt.Errorf("node: joining the cluster: %w", err)
		}
		nh, err := dragonboat.NewNodeHost(n.nhConfig)
		if err != nil {
			return fmt.Errorf("node: joining the cluster: %w", err)
		}
		n.nh = nh
	}
	return fmt.Errorf("node: no leader contacted this member: add it first (etcdctl member add %s --peer-urls=%s) with the same --initial-cluster-token",
		n.cfg.Name, strings.Join(n.peerURLs, ","))
}

// heardLeader waits up to d for the replica here of shardID to know a
// leader.
func (n *Node) heardLeader(ctx context.Context, shardID uint64, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	t := time.NewTicker(rttMillisecond * time.Millisecond)
	defer t.Stop()
	for {
		if _, _, ok, err := n.nh.GetLeaderID(shardID); err == nil && ok {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
	}
}
