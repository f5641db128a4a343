package node

import (
	"context"
	"strconv"
	"sync"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cairn-kv/cairn/placement"
)

// peerProbeEvery is how often the peer prober measures each member.
const peerProbeEvery = 5 * time.Second

// peerProber feeds etcd_network_peer_round_trip_time_seconds{To}: every
// peerProbeEvery it sends a gRPC health check to each other member's
// client port (the connections the node forwards on) and times the
// answer. It times the client port, not dragonboat's raft transport, which
// exposes no round trips; a member that does not answer within a period is
// not observed. One goroutine, owned by the node; Close stops it.
type peerProber struct {
	n    *Node
	stop chan struct{}
	wg   sync.WaitGroup
	once sync.Once
}

func startPeerProber(n *Node) *peerProber {
	p := &peerProber{n: n, stop: make(chan struct{})}
	p.wg.Add(1)
	go p.run()
	return p
}

func (p *peerProber) run() {
	defer p.wg.Done()
	t := time.NewTicker(peerProbeEvery)
	defer t.Stop()
	for {
		p.probe()
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
	}
}

// probe measures every other member once, one at a time.
func (p *peerProber) probe() {
	n := p.n
	v := n.membersView.Load()
	if v == nil {
		return
	}
	for _, m := range v.members {
		if m.ID == n.memberID || len(m.ClientURLs) == 0 {
			continue
		}
		cc, err := n.conns.Conn(placement.NodeID(m.ID))
		if err != nil {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), peerProbeEvery)
		start := time.Now()
		_, err = healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil {
			n.metrics.peerRTT.WithLabelValues(strconv.FormatUint(m.ID, 16)).Observe(time.Since(start).Seconds())
		}
		select {
		case <-p.stop:
			return
		default:
		}
	}
}

// Close stops the prober and waits for it.
func (p *peerProber) Close() {
	if p == nil {
		return
	}
	p.once.Do(func() { close(p.stop) })
	p.wg.Wait()
}
