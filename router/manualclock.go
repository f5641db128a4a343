package router

import (
	"slices"
	"sync"
	"time"
)

// ManualClock is a CompactorClock that moves only when told to (Advance):
// the compactor's tests drive its schedules with it, hours in
// milliseconds. The compactor waits on one After at a time; Await tells
// the caller when it does, which also means it has finished the round
// before.
type ManualClock struct {
	mu     sync.Mutex
	now    time.Time       // REQUIRES: mu
	timers []manualTimer   // REQUIRES: mu
	asked  []time.Duration // every duration passed to After, in order (REQUIRES: mu)
	added  chan struct{}   // size 1: a nudge that After was called
}

type manualTimer struct {
	at time.Time
	ch chan time.Time // size 1, so Advance never blocks
}

// NewManualClock returns a clock at 2025-01-01 UTC.
func NewManualClock() *ManualClock {
	return &ManualClock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), added: make(chan struct{}, 1)}
}

// Now implements CompactorClock.
func (c *ManualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After implements CompactorClock: the channel fires once Advance has
// moved the clock d on.
func (c *ManualClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	c.asked = append(c.asked, d)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.timers = append(c.timers, manualTimer{at: c.now.Add(d), ch: ch})
	select {
	case c.added <- struct{}{}:
	default:
	}
	return ch
}

// Advance moves the time on by d and fires the timers that are due.
func (c *ManualClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.timers = slices.DeleteFunc(c.timers, func(t manualTimer) bool {
		if t.at.After(c.now) {
			return false
		}
		t.ch <- c.now
		return true
	})
}

// Await waits until a timer is pending, or until limit has passed, and
// returns the duration the last After asked for; false if none came.
func (c *ManualClock) Await(limit time.Duration) (time.Duration, bool) {
	deadline := time.After(limit)
	for {
		c.mu.Lock()
		if len(c.timers) > 0 {
			d := c.asked[len(c.asked)-1]
			c.mu.Unlock()
			return d, true
		}
		c.mu.Unlock()
		select {
		case <-c.added:
		case <-deadline:
			return 0, false
		}
	}
}
