package router

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/mvcc"
	"github.com/cairn-kv/cairn/proto/internalpb"
	"github.com/cairn-kv/cairn/shard"
)

// sideMember is a member that records the closed revisions and kicks it
// is sent, and whether a range's closed revision ever went back; with
// hold, its first message is taken only once hold is closed (entered
// says it came).
type sideMember struct {
	*fakeMember
	hold    chan struct{}
	entered chan struct{}

	mu       sync.Mutex
	messages int
	closed   map[uint64]int64
	kicks    map[shard.RangeID]mvcc.Revision
	back     []string
}

func newSideMember() *sideMember {
	return &sideMember{fakeMember: &fakeMember{}, closed: map[uint64]int64{}, kicks: map[shard.RangeID]mvcc.Revision{}}
}

func (m *sideMember) Published(r *internalpb.ClosedRequest) {
	m.mu.Lock()
	m.messages++
	first := m.messages == 1
	m.mu.Unlock()
	if first && m.hold != nil {
		close(m.entered)
		<-m.hold
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, rc := range r.Ranges {
		if rc.Closed < m.closed[rc.Range] {
			m.back = append(m.back, fmt.Sprintf("range %d: %d after %d", rc.Range, rc.Closed, m.closed[rc.Range]))
		}
		m.closed[rc.Range] = max(m.closed[rc.Range], rc.Closed)
	}
}

func (m *sideMember) Kick(id shard.RangeID, rev mvcc.Revision) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.kicks[id] = max(m.kicks[id], rev)
}

// waitFor waits until cond holds of m (under its mu), failing the test
// with what it says otherwise after 20 s.
func (m *sideMember) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		m.mu.Lock()
		ok := cond()
		state := fmt.Sprintf("closed %v, kicks %v, %d messages", m.closed, m.kicks, m.messages)
		m.mu.Unlock()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never came: %s", what, state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// preSide is a member that predates the Side stream.
type preSide struct{ *internalServer }

func (preSide) Side(internalpb.Node_SideServer) error {
	return status.Error(codes.Unimplemented, "unknown method Side")
}

// TestSideChannelStream: the closed revisions and kicks member 1 sends
// member 2, however many, travel on one Side stream with no Closed or
// Kick call; while a message is being taken, what is published meanwhile
// waits and goes as one message with the newest of each range. A member
// that predates the stream is sent them by Closed and Kick calls. Either
// way member 2 ends with the newest of each range, and never sees one go
// back.
func TestSideChannelStream(t *testing.T) {
	const ranges, sends = 5, 200
	for _, tc := range []struct {
		name                  string
		old                   bool
		streams, calls, kicks int // Side streams, Closed and Kick calls member 2 serves (-1: some)
	}{
		{name: "stream", streams: 1},
		{name: "member without the stream", old: true, streams: 1, calls: -1, kicks: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m2 := newSideMember()
			m2.hold, m2.entered = make(chan struct{}), make(chan struct{})
			var srv internalpb.NodeServer = &internalServer{self: 2, m: m2, srv: New(Config{MemberID: 2})}
			if tc.old {
				srv = preSide{srv.(*internalServer)}
			}
			dial, counts := serveCounted(t, 2, srv)
			sc := NewSideChannel(NewForwarder(1, dial), 10*time.Second)
			t.Cleanup(sc.Close)

			// The first message is held at member 2 while the rest are
			// published: they go as one message after it.
			sc.Publish(2, &internalpb.RangeClosed{Range: 1, Closed: 1, Index: 1})
			select {
			case <-m2.entered:
			case <-time.After(20 * time.Second):
				t.Fatal("the first closed revision never reached member 2")
			}
			var wg sync.WaitGroup
			for r := range uint64(ranges) {
				wg.Add(1)
				go func() { // one per range, publishing it in rising order
					defer wg.Done()
					for i := range int64(sends / ranges) {
						sc.Publish(2, &internalpb.RangeClosed{Range: r + 1, Closed: i + 2, Index: uint64(i + 2)})
					}
				}()
			}
			wg.Wait()
			sc.kick(2, 7, 30)
			sc.kick(2, 7, 40)
			close(m2.hold)
			m2.waitFor(t, "the newest closed revision of each range and the highest kick", func() bool {
				for r := range uint64(ranges) {
					if m2.closed[r+1] != sends/ranges+1 {
						return false
					}
				}
				return m2.kicks[7] == 40
			})
			m2.mu.Lock()
			messages, back := m2.messages, m2.back
			m2.mu.Unlock()
			if len(back) > 0 {
				t.Errorf("closed revisions went back at member 2: %v", back)
			}
			if messages != 2 {
				t.Errorf("member 2 took %d messages of closed revisions, want 2 (the held one, then the rest coalesced)", messages)
			}
			if got := counts.get(internalpb.Node_Side_FullMethodName); got != tc.streams {
				t.Errorf("member 2 served %d Side streams, want %d", got, tc.streams)
			}
			if got := counts.get(internalpb.Node_Closed_FullMethodName); tc.calls >= 0 && got != tc.calls || tc.calls < 0 && got == 0 {
				t.Errorf("member 2 served %d Closed calls, want %d (-1: some)", got, tc.calls)
			}
			if got := counts.get(internalpb.Node_Kick_FullMethodName); got != tc.kicks {
				t.Errorf("member 2 served %d Kick calls, want %d", got, tc.kicks)
			}
		})
	}
}

// breakingSide is member 2 whose first Side stream fails once it has
// received a message, without taking it (as a member restarting would);
// the streams after are served.
type breakingSide struct {
	*internalServer
	mu     sync.Mutex
	broken bool
}

func (b *breakingSide) Side(stream internalpb.Node_SideServer) error {
	b.mu.Lock()
	first := !b.broken
	b.broken = true
	b.mu.Unlock()
	if !first {
		return b.internalServer.Side(stream)
	}
	if _, err := stream.Recv(); err != nil {
		return err
	}
	return status.Error(codes.Unavailable, "member 2 went away")
}

// TestSideChannelStreamBreaks: a closed revision whose message was lost
// with its stream — the stream failed, or its answer did not come in
// time — is not lost: the next publish for the member opens a stream
// again and sends it along.
func TestSideChannelStreamBreaks(t *testing.T) {
	for _, tc := range []struct {
		name string
		late bool // the first message is never answered (held at member 2)
	}{
		{name: "stream fails"},
		{name: "no answer in time", late: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m2 := newSideMember()
			in := &internalServer{self: 2, m: m2, srv: New(Config{MemberID: 2})}
			var srv internalpb.NodeServer = &breakingSide{internalServer: in}
			timeout := 10 * time.Second
			if tc.late {
				srv, timeout = in, 300*time.Millisecond
				m2.hold, m2.entered = make(chan struct{}), make(chan struct{})
				defer close(m2.hold)
			}
			dial, counts := serveCounted(t, 2, srv)
			sc := NewSideChannel(NewForwarder(1, dial), timeout)
			t.Cleanup(sc.Close)

			sc.Publish(2, &internalpb.RangeClosed{Range: 5, Closed: 10, Index: 3})
			// Until the first stream failed, nothing more is published.
			deadline := time.Now().Add(20 * time.Second)
			for {
				sc.streams.mu.Lock()
				st := sc.streams.by[2]
				sc.streams.mu.Unlock()
				failed := false
				if st != nil {
					st.mu.Lock()
					failed = st.failed != nil
					st.mu.Unlock()
				}
				if failed {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the first side stream never failed")
				}
				time.Sleep(5 * time.Millisecond)
			}
			sc.Publish(2, &internalpb.RangeClosed{Range: 6, Closed: 20, Index: 4})
			// (Held, the first message is not taken yet.)
			m2.waitFor(t, "range 5's closed revision, resent", func() bool { return m2.closed[5] == 10 && m2.closed[6] == 20 })
			if got := counts.get(internalpb.Node_Side_FullMethodName); got != 2 {
				t.Errorf("member 2 served %d Side streams, want 2", got)
			}
			if got := counts.get(internalpb.Node_Closed_FullMethodName); got != 0 {
				t.Errorf("member 2 served %d Closed calls, want 0", got)
			}
		})
	}
}
