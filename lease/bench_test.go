package lease

import (
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// grantN grants leases 1..n with ttl, committed, and promotes at epoch.
func grantN(b *testing.B, n int, ttl int64) (*Lessor, *pebble.DB) {
	db := openTestDB(b)
	l := openTestLessor(b, db)
	batch := db.NewIndexedBatch()
	for i := 1; i <= n; i++ {
		if _, err := l.Grant(batch, ID(i), ttl, epoch); err != nil {
			b.Fatal(err)
		}
	}
	if err := batch.Commit(pebble.NoSync); err != nil {
		b.Fatal(err)
	}
	batch.Close()
	l.Promote(epoch, 0)
	return l, db
}

// BenchmarkRenew100k: one keepalive among 100k leases.
func BenchmarkRenew100k(b *testing.B) {
	const n = 100_000
	l, _ := grantN(b, n, 60)
	now := epoch
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		now = now.Add(time.Microsecond)
		if _, _, err := l.Renew(ID(1+i%n), now); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkExpireRevoke100k: 100k leases expire at once; hand them out in
// batches of 1,000 and revoke each batch in one pebble batch (one raft
// apply).
func BenchmarkExpireRevoke100k(b *testing.B) {
	const n = 100_000
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		l, db := grantN(b, n, 10)
		b.StartTimer()
		now := epoch.Add(11 * time.Second)
		for {
			ids := l.Expired(now, 1000)
			if len(ids) == 0 {
				break
			}
			batch := db.NewIndexedBatch()
			for _, id := range ids {
				if _, err := l.Revoke(batch, id); err != nil {
					b.Fatal(err)
				}
			}
			if err := batch.Commit(pebble.NoSync); err != nil {
				b.Fatal(err)
			}
			batch.Close()
		}
		if l.Len() != 0 {
			b.Fatalf("%d leases left", l.Len())
		}
	}
}
