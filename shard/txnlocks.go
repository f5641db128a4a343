package shard

import (
	"context"

	"github.com/cairn-kv/cairn/proto/shardpb"
)

// Locks reads the locks of cross-range transactions the range holds, in
// id order (LocksQuery): the resolver's list of deadlines and primaries.
func (r *Replica) Locks(ctx context.Context, linearizable bool) ([]*shardpb.TxnLock, error) {
	return read[[]*shardpb.TxnLock](ctx, r, LocksQuery{}, linearizable)
}
