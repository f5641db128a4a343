package shard

import (
	"sync"
	"time"
)

// Clock is a member's closing round: Next returns a channel closed at the
// next tick, so the closers of every range on the member (RangeConfig.Tick)
// wake together and what they publish for a peer leaves as one message.
type Clock struct {
	mu sync.Mutex
	ch chan struct{} // REQUIRES: mu
}

// NewClock returns a clock that does not tick until Run.
func NewClock() *Clock { return &Clock{ch: make(chan struct{})} }

// Next returns a channel closed at the next tick.
func (c *Clock) Next() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ch
}

// Run ticks every period until stop is closed.
func (c *Clock) Run(stop <-chan struct{}, period time.Duration) {
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		}
		c.mu.Lock()
		close(c.ch)
		c.ch = make(chan struct{})
		c.mu.Unlock()
	}
}
