package watch

import (
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/cairn-kv/cairn/mvcc"
)

// stalledHistory is a History whose CompactRev waits, once, until told
// to go on: a state machine whose lock another goroutine holds.
type stalledHistory struct {
	entered, proceed chan struct{}
	once             sync.Once
}

func (h *stalledHistory) CompactRev() mvcc.Revision {
	h.once.Do(func() {
		close(h.entered)
		<-h.proceed
	})
	return 0
}

func (h *stalledHistory) Events(from, to mvcc.Revision, fn func(mvcc.Revision, []*mvccpb.Event) bool) error {
	return nil
}

// TestCatchupReadsHistoryOutsideHubLock: while a catch-up waits on its
// history (a state machine's lock, held by a snapshot restore), the hub
// still takes a Sync — the restore's call under that lock. Were the
// history read under the hub's lock, the two would deadlock, as a node
// test once did for 13 minutes in CI.
func TestCatchupReadsHistoryOutsideHubLock(t *testing.T) {
	h := NewHub(0)
	hist := &stalledHistory{entered: make(chan struct{}), proceed: make(chan struct{})}
	done := make(chan error, 1)
	go func() {
		_, err := h.Catchup(hist, 10)
		done <- err
	}()
	<-hist.entered
	synced := make(chan struct{})
	go func() {
		h.Sync(5, 0)
		close(synced)
	}()
	select {
	case <-synced:
	case <-time.After(10 * time.Second):
		close(hist.proceed)
		t.Fatal("Sync waited on a catch-up reading its history: the hub's lock is held across the read")
	}
	close(hist.proceed)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
