package shard

import (
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
)

// Observer is what a range reports for the node's metrics (Config.Observer);
// the node implements it with Prometheus types, so that this package
// imports none. Its methods run on dragonboat's apply goroutine and on the
// readers' and writers' goroutines: they must not block. Nil reports
// nothing.
type Observer interface {
	// Applied reports the etcd operations that one Update applied (every
	// entry of the batch), once its pebble batch is committed. Refused
	// requests count nothing.
	Applied(OpCounts)
	// Read reports the etcd operations of one read served by this
	// replica (a RangeQuery or a TxnQuery).
	Read(OpCounts)
	// Committed reports how long one Update's pebble commit took (without
	// fsync: the raft log is the durable record).
	Committed(time.Duration)
	// Synced reports how long one Sync (an fsync of pebble's WAL) took.
	Synced(time.Duration)
	// ProposalFailed reports a write that failed for a reason of the
	// group (no leader, timeout, the caller gone, the replica stopped),
	// not a refusal by the state machine.
	ProposalFailed()
	// Restamped reports a write refused as stale and stamped again
	// (sharded mode).
	Restamped()
}

// OpCounts counts etcd operations as etcd's mvcc metrics do
// (etcd_mvcc_{put,delete,range,txn}_total): a Put request or a put in a
// txn's branch taken is one put, a DeleteRange one delete, a Range one
// range; each compare of a txn is a range too (etcd reads the key); a Txn
// that runs more than one of these counts one txn. A lease revoke deletes
// each of its keys (one txn if more than one). The reads etcd makes for
// prev_kv are not counted. Splits counts the splits applied.
type OpCounts struct {
	Puts, Deletes, Ranges, Txns, Splits int
}

func (c *OpCounts) add(o OpCounts) {
	c.Puts += o.Puts
	c.Deletes += o.Deletes
	c.Ranges += o.Ranges
	c.Txns += o.Txns
	c.Splits += o.Splits
}

// txnCounts counts the operations of a txn as it ran: its compares and
// the operations of the branch resp says was taken, nested txns included.
func txnCounts(req *pb.TxnRequest, resp *pb.TxnResponse) OpCounts {
	var c OpCounts
	c.addTxn(req, resp)
	if c.Puts+c.Deletes+c.Ranges > 1 {
		c.Txns = 1
	}
	return c
}

func (c *OpCounts) addTxn(req *pb.TxnRequest, resp *pb.TxnResponse) {
	c.Ranges += len(req.GetCompare())
	ops := req.GetSuccess()
	if !resp.GetSucceeded() {
		ops = req.GetFailure()
	}
	for i, op := range ops {
		switch op.GetRequest().(type) {
		case *pb.RequestOp_RequestRange:
			c.Ranges++
		case *pb.RequestOp_RequestPut:
			c.Puts++
		case *pb.RequestOp_RequestDeleteRange:
			c.Deletes++
		case *pb.RequestOp_RequestTxn:
			var sub *pb.TxnResponse
			if rs := resp.GetResponses(); i < len(rs) {
				sub = rs[i].GetResponseTxn()
			}
			c.addTxn(op.GetRequestTxn(), sub)
		}
	}
}

// deleteCounts counts a revoke that deleted n keys.
func deleteCounts(n int) OpCounts {
	c := OpCounts{Deletes: n}
	if n > 1 {
		c.Txns = 1
	}
	return c
}
