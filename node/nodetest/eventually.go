package nodetest

import (
	"context"
	"testing"
	"time"
)

// poll is how often a wait looks at its condition again.
const poll = 10 * time.Millisecond

// Eventually polls cond until it holds, failing tb ("timed out waiting
// until <what>") if it does not within 20 seconds.
func Eventually(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(poll) // polling a condition, with a deadline
	}
}

// WaitFor polls cond until it returns nil, failing tb with cond's last
// error once ctx is done (the test's own deadline).
func WaitFor(ctx context.Context, tb testing.TB, cond func() error) {
	tb.Helper()
	for {
		err := cond()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			tb.Fatal(err)
		case <-time.After(poll):
		}
	}
}
