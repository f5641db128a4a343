package lease

import (
	"container/heap"
	"time"
)

// timeHeap is a min-heap of leases by one of their times, ties broken by
// id, so the order in which leases come out is a function of the inputs
// alone. Each lease knows its position (slot), so a renew moves it in
// O(log n) instead of leaving a stale entry behind.
//
// Invariant: for every i, items[i].slots[h.which] == i; a lease not in the
// heap has slot -1.
type timeHeap struct {
	which int // the index of the time and slot this heap orders by
	items []*lease
}

const (
	byDeadline   = 0 // the expiry heap: when to hand the lease to Expired
	byCheckpoint = 1 // the checkpoint heap: when to checkpoint the lease next
)

func (h *timeHeap) Len() int { return len(h.items) }

func (h *timeHeap) Less(i, j int) bool {
	a, b := h.items[i], h.items[j]
	if ta, tb := a.at[h.which], b.at[h.which]; !ta.Equal(tb) {
		return ta.Before(tb)
	}
	return a.id < b.id
}

func (h *timeHeap) Swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.items[i].slot[h.which] = i
	h.items[j].slot[h.which] = j
}

func (h *timeHeap) Push(x any) {
	l := x.(*lease)
	l.slot[h.which] = len(h.items)
	h.items = append(h.items, l)
}

func (h *timeHeap) Pop() any {
	n := len(h.items) - 1
	l := h.items[n]
	h.items[n] = nil
	h.items = h.items[:n]
	l.slot[h.which] = -1
	return l
}

// set places l in the heap at time t, adding it or moving it.
func (h *timeHeap) set(l *lease, t time.Time) {
	l.at[h.which] = t
	if i := l.slot[h.which]; i >= 0 {
		heap.Fix(h, i)
		return
	}
	heap.Push(h, l)
}

// remove takes l out of the heap if it is there.
func (h *timeHeap) remove(l *lease) {
	if i := l.slot[h.which]; i >= 0 {
		heap.Remove(h, i)
	}
}

// peek returns the lease with the earliest time, nil if the heap is empty.
func (h *timeHeap) peek() *lease {
	if len(h.items) == 0 {
		return nil
	}
	return h.items[0]
}

// clear empties the heap.
func (h *timeHeap) clear() {
	for _, l := range h.items {
		l.slot[h.which] = -1
	}
	h.items = nil
}
