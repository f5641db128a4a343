package compat

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/cairn-kv/cairn/node/testport"
)

// startTimeout bounds how long a server may take to become ready.
const startTimeout = 60 * time.Second

// server is one running store under test and a client of it.
type server struct {
	name      string
	endpoint  string   // http://127.0.0.1:port
	endpoints []string // all members' (a cluster), else none
	// linearize sends reads linearizable even where the request says
	// serializable (see startShardedCairnN).
	linearize bool
	cli       *clientv3.Client
	wire      *wireRecorder
	// revs numbers a sharded Cairn's revisions as etcd would (see
	// shardRevs); nil where revisions are compared as they are.
	revs *shardRevs
}

// wireRecorder keeps the error of the last unary call as the server sent it.
// clientv3 rewrites a known error message into its canonical error, code
// included, which would hide a server that sends etcd's message with the
// wrong code; the recorder sits under clientv3's interceptors and sees the
// raw status.
type wireRecorder struct {
	mu   sync.Mutex
	last error
}

func (w *wireRecorder) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	w.mu.Lock()
	w.last = err
	w.mu.Unlock()
	return err
}

// take returns the last call's raw error and forgets it.
func (w *wireRecorder) take() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	err := w.last
	w.last = nil
	return err
}

func mustURL(t testing.TB, s string) url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatalf("parse URL %q: %v", s, err)
	}
	return *u
}

// startEtcd starts an embedded single-member etcd in a temporary directory
// and returns once it serves clients. It is closed at the end of the test.
func startEtcd(t testing.TB, name string) *server {
	t.Helper()
	return startEtcdWith(t, name, nil)
}

// startEtcdWith is startEtcd with the config changed by edit (nil: none).
func startEtcdWith(t testing.TB, name string, edit func(*embed.Config)) *server {
	t.Helper()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		s, err := tryStartEtcd(t, name, edit)
		if err == nil {
			return s
		}
		lastErr = err
		if !errors.Is(err, syscall.EADDRINUSE) && !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	t.Fatalf("start etcd %s: %v", name, lastErr)
	return nil
}

func tryStartEtcd(t testing.TB, name string, edit func(*embed.Config)) (*server, error) {
	cfg := embed.NewConfig()
	cfg.Name = name
	cfg.Dir = t.TempDir()
	// etcd logs at error level when it is closed ("server closed"); its
	// start-up failures come back from StartEtcd and Err anyway.
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = true // the data dir is thrown away; fsync only slows the run
	client := mustURL(t, "http://"+testport.Addr(t))
	peer := mustURL(t, "http://"+testport.Addr(t))
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(name)
	cfg.ListenMetricsUrls = nil
	if edit != nil {
		edit(cfg)
	}

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		return nil, fmt.Errorf("etcd failed while starting: %w", err)
	case <-time.After(startTimeout):
		return nil, fmt.Errorf("etcd not ready after %v", startTimeout)
	}
	ep := "http://" + e.Clients[0].Addr().String()
	cli, wire := newClient(t, ep)
	return &server{name: name, endpoint: ep, cli: cli, wire: wire}, nil
}

// newClient connects a client and waits until a linearizable read succeeds,
// so that the first operation of a test is not the one that finds out the
// server is not answering yet.
func newClient(t testing.TB, endpoint string) (*clientv3.Client, *wireRecorder) {
	t.Helper()
	wire := &wireRecorder{}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(wire.intercept)},
	})
	if err != nil {
		t.Fatalf("client for %s: %v", endpoint, err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := cli.Get(ctx, "health-probe")
		cancel()
		if err == nil {
			return cli, wire
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not answer reads after %v: %v", endpoint, startTimeout, err)
		}
		// No fixed sleep: the 5s per-attempt timeout paces the retries, and a
		// fast failure (connection refused) is retried on the next tick.
		<-time.After(50 * time.Millisecond)
	}
}

// startPair starts a fresh etcd and the system under comparison: Cairn, or
// a second etcd with -self (to check the harness itself).
func startPair(t testing.TB) (etcd, other *server) {
	etcd = startEtcd(t, "etcd")
	if *flagSelf {
		return etcd, startEtcd(t, "etcd2")
	}
	return etcd, startCairn(t, "cairn")
}
