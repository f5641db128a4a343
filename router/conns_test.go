package router

import (
	"net"
	"testing"
	"time"

	"github.com/cairn-kv/cairn/placement"
)

// TestMemberConnsReconnectTiming: a connection to a member that fails
// keeps trying at most about a second apart (issue 27: a member that
// comes back is reached promptly, as etcd's peers reach each other),
// where gRPC's default waits 1 s, 1.6 s, 2.6 s, 4.1 s, ... up to two
// minutes between tries. The "member" accepts each connection and closes
// it at once, so that every try fails and is counted: the test watches
// the tries until there have been eight (about 3.5 s; gRPC's default
// takes over 20 s), failing at the first pause longer than a second and
// its jitter.
func TestMemberConnsReconnectTiming(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	tried := make(chan time.Time, 100)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tried <- time.Now()
			c.Close()
		}
	}()
	conns := NewMemberConns(func(placement.NodeID) (string, error) { return ln.Addr().String(), nil }, nil)
	defer conns.Close()
	cc, err := conns.Conn(2)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cc.Connect()

	const (
		tries  = 8
		maxGap = 1800 * time.Millisecond // a second, its jitter, and slack for a loaded machine
	)
	last := start
	for i := range tries {
		select {
		case at := <-tried:
			last = at
		case <-time.After(maxGap - time.Since(last)):
			t.Fatalf("no try for %v after try %d (%v after the first dial), want one at least every %v",
				time.Since(last), i, last.Sub(start), maxGap)
		}
	}
	t.Logf("%d tries in %v", tries, last.Sub(start))
}
