package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/cairn-kv/cairn/node/testport"
)

// Black-box tests: the real cairn binary, driven by the real etcd client.

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "cairn-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "cairn")
	build := exec.Command("go", "build", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build cairn:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a running cairn process.
type proc struct {
	cmd    *exec.Cmd
	ready  chan struct{}
	exited chan struct{}
	mu     sync.Mutex
	log    strings.Builder
}

// startCairn starts the binary in dir with args and waits (with a deadline)
// for etcd's "ready to serve client requests" line.
func startCairn(t *testing.T, dir string, args ...string) *proc {
	t.Helper()
	p := launch(t, dir, args...)
	p.waitReady(t)
	return p
}

// launch starts the binary in dir with args without waiting for it to be
// ready (members of a new cluster are ready only once a quorum runs).
func launch(t *testing.T, dir string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(binary, args...), ready: make(chan struct{}), exited: make(chan struct{})}
	p.cmd.Dir = dir
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.exited)
		sc := bufio.NewScanner(stderr)
		once := sync.Once{}
		for sc.Scan() {
			p.mu.Lock()
			p.log.WriteString(sc.Text() + "\n")
			p.mu.Unlock()
			if strings.Contains(sc.Text(), "ready to serve client requests") {
				once.Do(func() { close(p.ready) })
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = p.cmd.Wait()
	}()
	t.Cleanup(p.kill)
	return p
}

// waitReady waits, with a deadline, for etcd's readiness line.
func (p *proc) waitReady(t *testing.T) {
	t.Helper()
	select {
	case <-p.ready:
	case <-p.exited:
		t.Fatalf("cairn exited before it was ready:\n%s", p.output())
	case <-time.After(30 * time.Second):
		p.kill()
		t.Fatalf("cairn not ready within 30s:\n%s", p.output())
	}
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

func client(t *testing.T, endpoint string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestNoFlags: `cairn` with no flags serves on 127.0.0.1:2379 with its data
// in ./default.cairn, like etcd.
func TestNoFlags(t *testing.T) {
	if l, err := net.Listen("tcp", "127.0.0.1:2379"); err != nil {
		t.Skipf("port 2379 is taken on this machine: %v", err)
	} else {
		l.Close()
	}
	dir := t.TempDir()
	p := startCairn(t, dir)
	c := client(t, "http://127.0.0.1:2379")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "hello", "world"); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Get(ctx, "hello")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "world" {
		t.Fatalf("get hello = %v, %v", resp, err)
	}
	if st, err := os.Stat(filepath.Join(dir, "default.cairn")); err != nil || !st.IsDir() {
		t.Fatalf("./default.cairn was not created: %v", err)
	}
	// SIGTERM shuts down cleanly.
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		t.Fatalf("cairn did not exit on SIGTERM:\n%s", p.output())
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("exit code %d after SIGTERM:\n%s", code, p.output())
	}
}

type ack struct {
	value string
	rev   int64
}

// modes are the two modes black-box tests run cairn in: the default
// (sharded) and single-group, by the flags that ask for them.
var modes = []struct {
	name  string
	flags []string
}{
	{"sharded", nil},
	{"single-group", []string{"--single-group"}},
}

// TestKill9 kills cairn with SIGKILL under a concurrent write load, twice,
// and checks after each restart that every acknowledged write is there with
// its revision, and that the revision never went back; in both modes.
func TestKill9(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) { kill9(t, m.flags...) })
	}
}

func kill9(t *testing.T, flags ...string) {
	dir := t.TempDir()
	cport, pport := testport.Port(t), testport.Port(t)
	args := append([]string{"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", fmt.Sprintf("http://127.0.0.1:%d", cport),
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", pport),
		"--heartbeat-interval", "20", "--election-timeout", "200"}, flags...)
	endpoint := fmt.Sprintf("http://127.0.0.1:%d", cport)

	acked := map[string]ack{}
	var maxRev int64
	for round := 0; round < 2; round++ {
		p := startCairn(t, dir, args...)
		c := client(t, endpoint)
		verify(t, c, acked, maxRev)

		// Write until enough acknowledgements have come back, then kill.
		var (
			mu    sync.Mutex
			count int
			wg    sync.WaitGroup
		)
		enough := make(chan struct{})
		var once sync.Once
		ctx, cancel := context.WithCancel(context.Background())
		for w := 0; w < 16; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ctx.Err() == nil; i++ {
					k, v := fmt.Sprintf("r%d/w%02d/%06d", round, w, i), fmt.Sprintf("v%d-%d", w, i)
					resp, err := c.Put(ctx, k, v)
					if err != nil {
						return // the process is gone; unacknowledged writes may or may not exist
					}
					mu.Lock()
					acked[k] = ack{v, resp.Header.Revision}
					maxRev = max(maxRev, resp.Header.Revision)
					count++
					if count >= 1500 {
						once.Do(func() { close(enough) })
					}
					mu.Unlock()
				}
			}()
		}
		select {
		case <-enough:
		case <-time.After(60 * time.Second):
			t.Fatalf("round %d: load made no progress (%d acks)", round, count)
		}
		p.kill()
		cancel()
		wg.Wait()
		c.Close()
		t.Logf("round %d: killed after %d acknowledged writes (max revision %d)", round, count, maxRev)
	}
	p := startCairn(t, dir, args...)
	verify(t, client(t, endpoint), acked, maxRev)
	_ = p
}

// verify checks every acknowledged write and the revision floor.
func verify(t *testing.T, c *clientv3.Client, acked map[string]ack, maxRev int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, "r", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Revision < maxRev {
		t.Fatalf("revision went back: %d after restart, %d acknowledged before", resp.Header.Revision, maxRev)
	}
	got := map[string]ack{}
	for _, kv := range resp.Kvs {
		got[string(kv.Key)] = ack{string(kv.Value), kv.ModRevision}
	}
	for k, want := range acked {
		if g, ok := got[k]; !ok || g != want {
			t.Fatalf("acknowledged write %s=%s@%d lost or changed after kill -9: got %+v (present %v)", k, want.value, want.rev, g, ok)
		}
	}
	// A new write continues above every acknowledged revision.
	pr, err := c.Put(ctx, "after-restart", "x")
	if err != nil {
		t.Fatal(err)
	}
	if pr.Header.Revision <= maxRev {
		t.Fatalf("new write got revision %d, not above acknowledged %d", pr.Header.Revision, maxRev)
	}
}
