package node

import "github.com/cairn-kv/cairn/placement"

// seedPeers adds the members of --initial-cluster to the registry under
// every id a join generation may have given them.
func (n *Node) seedPeers(members []initialMember) {
	for _, m := range members {
		addr, err := hostPort(m.peerURLs[0])
		if err != nil {
			continue
		}
		for gen := range maxJoinGenerations {
			n.peers.Seed(placement.NodeID(memberIDGen(m.peerURLs, n.token, gen)), addr)
		}
	}
}

// memberTarget is placement.MemberTarget for a bare member id.
func memberTarget(id uint64) string { return placement.MemberTarget(placement.NodeID(id)) }
