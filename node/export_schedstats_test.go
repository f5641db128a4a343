package node

// SchedulerAsks are this node's counts of the placement scheduler's
// questions: the RangeStats calls it answered, the ChangeRange STATS calls
// it answered, and the reports its scheduler gathered (rounds, while it
// led the placement group).
func (n *Node) SchedulerAsks() (batched, single, reports int64) {
	a := n.stats.asks()
	return a.batched.Load(), a.single.Load(), a.reports.Load()
}

// PredateRangeStats makes this node answer RangeStats Unimplemented, as a
// member that predates the call does (false: answer it again).
func (n *Node) PredateRangeStats(on bool) { n.stats.asks().predate.Store(on) }
