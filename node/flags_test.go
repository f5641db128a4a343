package node_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestMaxLearners: MemberAdd of a learner beyond Config.MaxLearners is
// refused with etcd's error; the default allows one, and a voter is not
// counted.
func TestMaxLearners(t *testing.T) {
	for _, tc := range []struct {
		max, want int // want: learners added before the refusal
	}{{0, 1}, {2, 2}, {-1, 0}} {
		c := nodetest.Start(t, 1, nodetest.Edit(func(cfg *node.Config) { cfg.MaxLearners = tc.max }))
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cli := c.Client(0)
		for i := range tc.want {
			if _, err := cli.MemberAddAsLearner(ctx, []string{fmt.Sprintf("http://127.0.0.1:%d", i+1)}); err != nil {
				t.Fatalf("max %d: learner %d: %v", tc.max, i+1, err)
			}
		}
		if _, err := cli.MemberAddAsLearner(ctx, []string{"http://127.0.0.1:9"}); !errors.Is(err, rpctypes.ErrTooManyLearners) {
			t.Fatalf("max %d: learner %d: %v, want %v", tc.max, tc.want+1, err, rpctypes.ErrTooManyLearners)
		}
	}
}

// TestWALDir: with Config.WALDir the raft log is written there.
func TestWALDir(t *testing.T) {
	wal := t.TempDir()
	c := nodetest.Start(t, 1, nodetest.Edit(func(cfg *node.Config) { cfg.WALDir = wal }))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Client(0).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(wal)
	if err != nil || len(entries) == 0 {
		t.Fatalf("--wal-dir %s holds %v (%v), want the raft log", wal, entries, err)
	}
}

// TestSlowRequestsLogged: a unary request slower than
// WarningUnaryRequestDuration is logged at warn as "request stats".
func TestSlowRequestsLogged(t *testing.T) {
	var buf syncBuffer
	c := nodetest.Start(t, 1, nodetest.Edit(func(cfg *node.Config) {
		cfg.WarningUnaryRequestDuration = time.Nanosecond
		cfg.Logger = slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Client(0).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	nodetest.Eventually(t, "a request stats line for the put", func() bool {
		for _, l := range strings.Split(buf.String(), "\n") {
			if strings.Contains(l, `"msg":"request stats"`) && strings.Contains(l, `"method":"/etcdserverpb.KV/Put"`) &&
				strings.Contains(l, `"level":"WARN"`) {
				return true
			}
		}
		return false
	})
}

// TestSlowAppliesLogged: with WarningApplyDuration below any apply, a put
// is logged at warn as etcd's "apply request took too long", with its
// value as a size only, a read with etcd's "read-only range " prefix, and
// both are counted in etcd_server_slow_apply_total; with the default, a
// put on an idle member logs nothing of the kind.
func TestSlowAppliesLogged(t *testing.T) {
	var buf syncBuffer
	c := nodetest.Start(t, 1, nodetest.Edit(func(cfg *node.Config) {
		cfg.WarningApplyDuration = time.Nanosecond
		cfg.Logger = slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := c.Client(0).Put(ctx, "slowkey", "secret-value"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client(0).Get(ctx, "slowkey", clientv3.WithSerializable()); err != nil {
		t.Fatal(err)
	}
	line := func(want ...string) func() bool {
		return func() bool {
			for _, l := range strings.Split(buf.String(), "\n") {
				ok := strings.Contains(l, `"msg":"apply request took too long"`) && strings.Contains(l, `"level":"WARN"`)
				for _, w := range want {
					ok = ok && strings.Contains(l, w)
				}
				if ok {
					return true
				}
			}
			return false
		}
	}
	nodetest.Eventually(t, "a slow apply line for the put", line(`"prefix":""`, `put:<key:\"slowkey\" value_size:12 >`, `"response":"size:`))
	nodetest.Eventually(t, "a slow apply line for the read", line(`"prefix":"read-only range "`, `range_response_count:1`))
	if strings.Contains(buf.String(), "secret-value") {
		t.Errorf("the log shows the put's value:\n%s", buf.String())
	}
	if v := value(scrape(t, c.URLs()[0]+"/metrics"), "etcd_server_slow_apply_total", nil); v < 2 {
		t.Errorf("etcd_server_slow_apply_total = %v, want at least 2", v)
	}

	var quiet syncBuffer
	d := nodetest.Start(t, 1, nodetest.Edit(func(cfg *node.Config) {
		cfg.Logger = slog.New(slog.NewJSONHandler(&quiet, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}))
	if _, err := d.Client(0).Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(quiet.String(), "apply request took too long") {
		t.Errorf("a put on an idle member was logged as slow with the default 100ms:\n%s", quiet.String())
	}
}

// TestSocketReusePort: with SocketReusePort another socket with
// SO_REUSEPORT can bind the client port, which a node without it refuses.
func TestSocketReusePort(t *testing.T) {
	reuse := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) { err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) }); cerr != nil {
			return cerr
		}
		return err
	}}
	for _, on := range []bool{true, false} {
		c := nodetest.Start(t, 1, nodetest.Edit(func(cfg *node.Config) { cfg.SocketReusePort = on }))
		client, err := url.Parse(c.Node(0).ClientURLs()[0])
		if err != nil {
			t.Fatal(err)
		}
		l, err := reuse.Listen(context.Background(), "tcp", client.Host)
		if on && err != nil {
			t.Fatalf("reuse port on: a second listener on %s: %v", client.Host, err)
		}
		if !on && err == nil {
			t.Fatalf("reuse port off: a second listener on %s bound", client.Host)
		}
		if l != nil {
			_ = l.Close()
		}
	}
}

// syncBuffer is a bytes.Buffer safe for a logger and a test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRaftFlags: --pre-vote and --snapshot-catchup-entries reach the
// ranges' raft groups; by default pre-vote is on and 5000 entries are
// kept, or half of a smaller --snapshot-count.
func TestRaftFlags(t *testing.T) {
	for _, tc := range []struct {
		edit    func(*node.Config)
		preVote bool
		catchUp uint64
	}{
		{func(*node.Config) {}, true, 5000},
		{func(c *node.Config) { c.SnapshotCount = 100 }, true, 50},
		{func(c *node.Config) { c.DisablePreVote, c.SnapshotCatchUpEntries = true, 20000 }, false, 20000},
	} {
		c := nodetest.Start(t, 1, nodetest.Edit(tc.edit))
		if preVote, catchUp := c.Node(0).RaftSettings(); preVote != tc.preVote || catchUp != tc.catchUp {
			t.Errorf("pre-vote %v, catch-up entries %d; want %v, %d", preVote, catchUp, tc.preVote, tc.catchUp)
		}
	}
}

// TestMaxConcurrentStreamsBlocksTimed: with Config.MaxConcurrentStreams 1
// a connection with a watch stream open cannot start a second call, which
// waits until its deadline (timed: the deadline is the only way to see a
// call wait); the limit's default leaves it free.
func TestMaxConcurrentStreamsBlocksTimed(t *testing.T) {
	for _, limit := range []uint32{1, 0} {
		c := nodetest.Start(t, 1, nodetest.Edit(func(cfg *node.Config) { cfg.MaxConcurrentStreams = limit }))
		conn, err := grpc.NewClient(strings.TrimPrefix(c.Node(0).ClientURLs()[0], "http://"),
			grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		w, err := pb.NewWatchClient(conn).Watch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: &pb.WatchCreateRequest{Key: []byte("k")}}}); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Recv(); err != nil {
			t.Fatal(err)
		}
		short, cancelShort := context.WithTimeout(ctx, time.Second)
		_, err = pb.NewKVClient(conn).Range(short, &pb.RangeRequest{Key: []byte("k")})
		cancelShort()
		if blocked := status.Code(err) == codes.DeadlineExceeded; blocked != (limit == 1) {
			t.Errorf("limit %d: a range beside a watch stream: %v", limit, err)
		}
	}
}
