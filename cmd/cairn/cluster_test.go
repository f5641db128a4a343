package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/cairn-kv/cairn/node/testport"
)

// TestClusterKill9: three cairn processes started with etcd's cluster
// flags; the etcd client with all three endpoints writes under load; the
// leader's process is killed with SIGKILL; writes resume on the others;
// the killed member restarts with the same flags and catches up. Every
// acknowledged write is then readable, and HashKV is equal on all three;
// in both modes.
func TestClusterKill9(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) { clusterKill9(t, m.flags...) })
	}
}

func clusterKill9(t *testing.T, flags ...string) {
	pc := launchCluster(t, 3, "kill9-test", append([]string{"--heartbeat-interval", "20", "--election-timeout", "200"}, flags...)...)
	dir, endpoints, args, procs := pc.dir, pc.endpoints, pc.args, pc.procs
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	var (
		mu    sync.Mutex
		acked = map[string]ack{}
		wg    sync.WaitGroup
	)
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(acked) }
	lctx, stopLoad := context.WithCancel(ctx)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; lctx.Err() == nil; i++ {
				k, v := fmt.Sprintf("r/w%02d/%06d", w, i), fmt.Sprintf("v%d", i)
				pctx, pcancel := context.WithTimeout(lctx, 5*time.Second)
				resp, err := c.Put(pctx, k, v)
				pcancel()
				if err != nil {
					continue // during the election; this key may or may not exist
				}
				mu.Lock()
				acked[k] = ack{v, resp.Header.Revision}
				mu.Unlock()
			}
		}()
	}
	waitFor(t, "500 acknowledged writes", func() bool { return count() >= 500 })

	st, err := c.Status(ctx, endpoints[0])
	if err != nil {
		t.Fatal(err)
	}
	ml, err := c.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	victim := -1
	for _, m := range ml.Members {
		if m.ID == st.Leader {
			for i, e := range endpoints {
				if len(m.ClientURLs) > 0 && m.ClientURLs[0] == e {
					victim = i
				}
			}
		}
	}
	if victim < 0 {
		t.Fatalf("leader %x not found among %v", st.Leader, ml.Members)
	}
	procs[victim].kill()
	before := count()
	waitFor(t, "writes resume after the leader was killed", func() bool { return count() >= before+500 })
	procs[victim] = startCairn(t, dir, args[victim]...)
	stopLoad()
	wg.Wait()

	last, err := c.Put(ctx, "last", "v")
	if err != nil {
		t.Fatal(err)
	}
	hashes := map[uint32]bool{}
	for _, e := range endpoints {
		waitFor(t, e+" catches up", func() bool {
			st, err := c.Status(ctx, e)
			return err == nil && st.Header.Revision >= last.Header.Revision
		})
		h, err := c.HashKV(ctx, e, last.Header.Revision)
		if err != nil {
			t.Fatal(err)
		}
		hashes[h.Hash] = true
	}
	if len(hashes) != 1 {
		t.Fatalf("members disagree on HashKV at %d: %d hashes", last.Header.Revision, len(hashes))
	}
	verifyAcked(t, client(t, endpoints[victim]), acked)
}

// verifyAcked checks that every acknowledged write is there, unchanged.
func verifyAcked(t *testing.T, c *clientv3.Client, acked map[string]ack) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, "r/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]ack{}
	for _, kv := range resp.Kvs {
		got[string(kv.Key)] = ack{string(kv.Value), kv.ModRevision}
	}
	for k, want := range acked {
		if g, ok := got[k]; !ok || g != want {
			t.Fatalf("acknowledged write %s=%s@%d lost or changed: got %+v (present %v)", k, want.value, want.rev, g, ok)
		}
	}
}

// waitFor polls cond until it holds, failing after a deadline.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, with a deadline
	}
}

// TestSnapshotRestoreCommand: a backup saved with the etcd client from one
// cairn is restored by `cairn snapshot restore` into a data directory a new
// cairn serves the same keys from.
func TestSnapshotRestoreCommand(t *testing.T) {
	dir := t.TempDir()
	endpoint := fmt.Sprintf("http://127.0.0.1:%d", testport.Port(t))
	startCairn(t, dir, "--data-dir", filepath.Join(dir, "a"), "--listen-client-urls", endpoint,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", testport.Port(t)))
	c := client(t, endpoint)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	rd, err := c.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(rd)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "backup.db")
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(binary, "snapshot", "restore", file, "--data-dir", filepath.Join(dir, "b")).CombinedOutput()
	if err != nil {
		t.Fatalf("cairn snapshot restore: %v\n%s", err, out)
	}
	endpoint2 := fmt.Sprintf("http://127.0.0.1:%d", testport.Port(t))
	startCairn(t, dir, "--data-dir", filepath.Join(dir, "b"), "--listen-client-urls", endpoint2,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", testport.Port(t)))
	r, err := client(t, endpoint2).Get(ctx, "k")
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "v" {
		t.Fatalf("restored cairn: %v %v", r, err)
	}
}

// procCluster is cairn processes founding one cluster in dir.
type procCluster struct {
	dir       string
	endpoints []string   // the members' client URLs
	args      [][]string // each member's command line, for a restart
	procs     []*proc
}

// launchCluster starts size members founding a cluster with token, each
// with flags added, and waits until every one is ready.
func launchCluster(t *testing.T, size int, token string, flags ...string) *procCluster {
	t.Helper()
	pc := &procCluster{dir: t.TempDir(), args: make([][]string, size), procs: make([]*proc, size)}
	var initial []string
	for i := range size {
		client := fmt.Sprintf("http://127.0.0.1:%d", testport.Port(t))
		peer := fmt.Sprintf("http://127.0.0.1:%d", testport.Port(t))
		name := fmt.Sprintf("m%d", i)
		initial = append(initial, name+"="+peer)
		pc.endpoints = append(pc.endpoints, client)
		pc.args[i] = append([]string{"--name", name, "--data-dir", filepath.Join(pc.dir, name),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster-state", "new", "--initial-cluster-token", token}, flags...)
	}
	for i := range size {
		pc.args[i] = append(pc.args[i], "--initial-cluster", strings.Join(initial, ","))
		pc.procs[i] = launch(t, pc.dir, pc.args[i]...)
	}
	for _, p := range pc.procs {
		p.waitReady(t)
	}
	return pc
}
