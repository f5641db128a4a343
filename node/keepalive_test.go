package node_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestKeepaliveQuietWatchTiming: a client that pings every 10 s (grpc-go's
// floor for client keepalive, and what etcdctl and kube-apiserver configure
// through clientv3's DialKeepAliveTime) on a connection whose only stream
// is a quiet watch is not sent GOAWAY "too_many_pings" by a member with
// etcd's default enforcement policy (--grpc-keepalive-min-time 5s); one
// that enforces a minimum above the client's interval is, after grpc-go's
// three strikes — which shows the frames this test watches for do appear.
//
// Timing: the client's pings are paced by its keepalive timer, so each case
// takes four ping intervals (about 40 s); the cases run in parallel, and
// with the package's other waiting tests (make test-unit's -parallel).
func TestKeepaliveQuietWatchTiming(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		minTime time.Duration // node.Config.GRPCKeepAliveMinTime
		goaway  bool
	}{
		{name: "etcd's default policy", goaway: false},
		{name: "minimum above the client's interval", minTime: time.Minute, goaway: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cl := nodetest.Start(t, 1, nodetest.Edit(func(c *node.Config) { c.GRPCKeepAliveMinTime = tc.minTime }))
			h2 := &frameWatch{}
			c, err := clientv3.New(clientv3.Config{
				Endpoints:            cl.URLs(),
				DialTimeout:          5 * time.Second,
				DialKeepAliveTime:    10 * time.Second,
				DialKeepAliveTimeout: 5 * time.Second,
				Logger:               zap.NewNop(),
				DialOptions:          []grpc.DialOption{grpc.WithContextDialer(h2.dial)},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			wch := c.Watch(ctx, "quiet", clientv3.WithCreatedNotify())
			if r := <-wch; !r.Created {
				t.Fatalf("watch not created: %v", r.Err())
			}
			// The server answers each ping before it counts a strike; the
			// fourth ping is the one grpc-go's third strike GOAWAYs.
			const pings = 4
			nodetest.WaitFor(ctx, t, func() error {
				if acks, reason := h2.seen(); acks < pings && reason == "" {
					return fmt.Errorf("the server answered %d keepalive pings, want %d", acks, pings)
				}
				return nil
			})
			// A request sent now is answered after any GOAWAY the server
			// queued behind its last ping acknowledgement: the server
			// writes frames in order, and a closed connection's GOAWAY was
			// read before the client moved to a new one.
			if _, err := c.Get(ctx, "quiet"); err != nil {
				t.Fatal(err)
			}
			acks, reason := h2.seen()
			if got := reason == "too_many_pings"; got != tc.goaway {
				t.Fatalf("after %d pings answered: GOAWAY %q; want too_many_pings: %v", acks, reason, tc.goaway)
			}
		})
	}
}

// frameWatch reads the HTTP/2 frames the server sends on the client's
// connections: the acknowledgements of keepalive PINGs and the debug data
// of a GOAWAY.
type frameWatch struct {
	mu     sync.Mutex
	acks   int    // guarded by mu: keepalive pings acknowledged
	goaway string // guarded by mu: the last GOAWAY's debug data
}

func (w *frameWatch) dial(ctx context.Context, addr string) (net.Conn, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &watchedConn{Conn: conn, w: w}, nil
}

func (w *frameWatch) seen() (acks int, goaway string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acks, w.goaway
}

// watchedConn parses what it reads as a stream of HTTP/2 frames (a server
// sends no preface string, only frames).
type watchedConn struct {
	net.Conn
	w   *frameWatch
	buf []byte // the start of a frame not read whole yet
}

// HTTP/2 frame types and flags (RFC 9113 section 6).
const (
	frameHeaderLen = 9
	framePing      = 0x6
	frameGoAway    = 0x7
	flagAck        = 0x1
)

// keepalivePing is the payload of grpc-go's keepalive pings; its
// bandwidth-estimation pings, which a client sends as data arrives, carry
// another one.
var keepalivePing [8]byte

func (c *watchedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.buf = append(c.buf, p[:n]...)
	for len(c.buf) >= frameHeaderLen {
		size := int(c.buf[0])<<16 | int(c.buf[1])<<8 | int(c.buf[2])
		if len(c.buf) < frameHeaderLen+size {
			break
		}
		kind, flags, payload := c.buf[3], c.buf[4], c.buf[frameHeaderLen:frameHeaderLen+size]
		c.w.mu.Lock()
		switch {
		case kind == framePing && flags&flagAck != 0 && bytes.Equal(payload, keepalivePing[:]):
			c.w.acks++
		case kind == frameGoAway && len(payload) >= 8: // last stream id, error code, debug data
			c.w.goaway = string(payload[8:])
		}
		c.w.mu.Unlock()
		c.buf = c.buf[frameHeaderLen+size:]
	}
	return n, err
}
