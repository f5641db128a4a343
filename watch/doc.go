// Package watch will hold the watchers of one shard, fed by the state
// machine's change events (see DESIGN.md "Watch"). It is empty until the
// watch issue; the shard already hands every applied batch's events to
// shard.Config.OnApply for it.
package watch
