package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/router"
)

// failoverRefuseBound is how soon a request that requires a leader is
// refused by a member that knows none: "at once", with slack for a loaded
// machine; waiting for a leader would take the request timeout (6 s).
const failoverRefuseBound = time.Second

// TestFailoverQuorumLost (issue 27): three members; the two other than a
// survivor are killed with SIGKILL, so that no range (and no placement
// group) can elect a leader. Once the survivor knows no leader of any
// range it holds:
//   - a put and a linearizable get made with clientv3.WithRequireLeader
//     are refused with etcd's "no leader" at once, as etcd's interceptor
//     refuses them, so that the client can go elsewhere;
//   - a put and a linearizable get made without it wait for a leader
//     instead of failing: one killed member is restarted meanwhile, and
//     both succeed once the quorum is back (within etcd's request
//     timeout, 6 s here, or they would fail).
//
// In both modes, and in sharded mode once more after a split with the
// keys in range 2, whose leadership is checked as range 1's is.
func TestFailoverQuorumLost(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) { failoverQuorumLost(t, m.flags, false, "") })
	}
	t.Run("sharded-range2", func(t *testing.T) { failoverQuorumLost(t, nil, true, failoverSplitKey) })
}

func failoverQuorumLost(t *testing.T, flags []string, split bool, prefix string) {
	const size = 3
	pc := launchCluster(t, size, "failover-quorum-test", append([]string{"--heartbeat-interval", "50", "--election-timeout", failoverElectionMs}, flags...)...)
	endpoints := pc.endpoints
	if split {
		if out, err := exec.Command(binary, "range", "split", "--endpoints", endpoints[0], failoverSplitKey).CombinedOutput(); err != nil {
			t.Fatalf("cairn range split %s: %v\n%s", failoverSplitKey, err, out)
		}
	}
	const survivor = 0
	key := prefix + "k"
	c := client(t, endpoints[survivor])
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, key, "before"); err != nil {
		t.Fatal(err)
	}

	for i := range size {
		if i != survivor {
			pc.procs[i].kill()
		}
	}
	waitFor(t, "the survivor knows no leader", func() bool { return leaderless(endpoints[survivor]) })

	// Requiring a leader: refused at once. clientv3 retries a read that
	// failed Unavailable (etcd's "no leader" is) until its deadline, so the
	// get goes through a plain gRPC connection, as a client of another
	// language would see it.
	start := time.Now()
	_, err := c.Put(clientv3.WithRequireLeader(ctx), key, "required")
	if took := time.Since(start); !errors.Is(err, rpctypes.ErrNoLeader) || took > failoverRefuseBound {
		t.Errorf("put requiring a leader, with none: %v after %v, want %q within %v", err, took, rpctypes.ErrNoLeader, failoverRefuseBound)
	}
	conn, err := grpc.NewClient(strings.TrimPrefix(endpoints[survivor], "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start = time.Now()
	rctx := metadata.AppendToOutgoingContext(ctx, rpctypes.MetadataRequireLeaderKey, rpctypes.MetadataHasLeader)
	_, err = pb.NewKVClient(conn).Range(rctx, &pb.RangeRequest{Key: []byte(key)})
	if took, want := time.Since(start), status.Convert(rpctypes.ErrGRPCNoLeader); status.Code(err) != want.Code() ||
		status.Convert(err).Message() != want.Message() || took > failoverRefuseBound {
		t.Errorf("linearizable get requiring a leader, with none: %v after %v, want %q within %v", err, took, want.Message(), failoverRefuseBound)
	}

	// Not requiring one: they wait, and succeed once a quorum is back.
	start = time.Now()
	get, put := getAndPut(ctx, c, key, start)
	back := (survivor + 1) % size
	pc.procs[back] = launch(t, pc.dir, pc.args[back]...)
	g, p := <-get, <-put
	t.Logf("issued without a leader, a member restarted at once: linearizable get answered in %v (err %v); put in %v (err %v)", g.took, g.err, p.took, p.err)
	if g.err != nil {
		t.Errorf("linearizable get issued while no leader, quorum back meanwhile: %v after %v, want an answer", g.err, g.took)
	}
	if p.err != nil {
		t.Errorf("put issued while no leader, quorum back meanwhile: %v after %v, want success", p.err, p.took)
	}
	pc.procs[back].waitReady(t)
	t.Logf("the restarted member was ready %v after the requests were issued", time.Since(start))
}

// leaderless says whether the member serving ep knows no leader of any
// range it holds: its /metrics says etcd_server_has_leader 0 (range 1, or
// another range here, has none) and, where it serves /cairn/ranges
// (sharded mode), no range there names a leader.
func leaderless(ep string) bool {
	resp, err := http.Get(ep + "/metrics")
	if err != nil {
		return false
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || !strings.Contains(string(body), "\netcd_server_has_leader 0\n") {
		return false
	}
	resp, err = http.Get(ep + "/cairn/ranges")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return true
	}
	var ranges []router.RangeInfo
	if err := json.NewDecoder(resp.Body).Decode(&ranges); err != nil {
		return false
	}
	for _, r := range ranges {
		if r.Leader != 0 {
			return false
		}
	}
	return true
}
