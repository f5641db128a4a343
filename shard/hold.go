package shard

import (
	"time"
)

// The transfer hold (see the package doc, "Leader transfer"): while a
// TransferHold applies, this client proposes nothing new, so that the
// target applies everything and takes leadership at once.

// Hold makes this replica client propose nothing new until until (but for
// at most max from now), or until LeaderChanged reports that target leads. Requests keep queueing
// and go out together when the hold ends; proposals already sent are not
// affected. A hold that ended long ago (an entry replayed at start) is a
// no-op.
func (r *Replica) Hold(target ReplicaID, until time.Time, max time.Duration) {
	if limit := time.Now().Add(max); until.After(limit) {
		until = limit
	}
	if time.Until(until) <= 0 {
		return
	}
	r.holdMu.Lock()
	defer r.holdMu.Unlock()
	r.holdUntil, r.holdTarget = until, target
	close(r.holdWake)
	r.holdWake = make(chan struct{})
}

// LeaderChanged ends a hold waiting for leader to lead.
func (r *Replica) LeaderChanged(leader ReplicaID) {
	r.holdMu.Lock()
	defer r.holdMu.Unlock()
	if leader == 0 || leader != r.holdTarget || r.holdUntil.IsZero() {
		return
	}
	r.holdUntil, r.holdTarget = time.Time{}, 0
	close(r.holdWake)
	r.holdWake = make(chan struct{})
}

// held returns how long the current hold lasts (≤ 0: none) and the channel
// closed when it changes.
func (r *Replica) held() (time.Duration, <-chan struct{}) {
	r.holdMu.Lock()
	defer r.holdMu.Unlock()
	return time.Until(r.holdUntil), r.holdWake
}
