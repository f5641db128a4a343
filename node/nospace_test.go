package node_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/node/nodetest"
)

// TestShardedNospaceRecovers: a sharded store filled past its quota through
// range 2 raises NOSPACE, and etcd's recovery (compact to the current
// revision, defragment, disarm) lets writes to range 2 in again, a large one
// included: the quota check counts the data in use, which the
// defragmentation brings back down, not the files pebble still keeps.
func TestShardedNospaceRecovers(t *testing.T) {
	const quota = 8 << 20
	cl := nodetest.Start(t, 1, nodetest.Sharded("m"), nodetest.Edit(func(c *node.Config) { c.QuotaBackendBytes = quota }))
	cli, url := cl.Client(0), cl.Node(0).ClientURLs()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Random values: pebble compresses its tables. "z" is in range 2.
	rnd := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 256<<10)
	for i := range buf {
		buf[i] = byte(rnd.Uint32())
	}
	var rev int64
	for i := 0; rev == 0; i++ {
		if i == 8*quota/len(buf) {
			t.Fatalf("%d puts of %d bytes did not exceed a %d-byte quota", i, len(buf), quota)
		}
		_, err := cli.Put(ctx, "z", string(buf))
		switch {
		case errors.Is(err, rpctypes.ErrNoSpace):
			resp, err := cli.Get(ctx, "z", clientv3.WithKeysOnly())
			if err != nil {
				t.Fatal(err)
			}
			rev = resp.Header.Revision
		case err != nil:
			t.Fatalf("put %d: %v", i, err)
		}
	}
	if _, err := cli.Compact(ctx, rev); err != nil {
		t.Fatalf("compact at %d: %v", rev, err)
	}
	if _, err := cli.Defragment(ctx, url); err != nil {
		t.Fatalf("defragment: %v", err)
	}
	if _, err := cli.AlarmDisarm(ctx, &clientv3.AlarmMember{}); err != nil {
		t.Fatalf("alarm disarm: %v", err)
	}
	if _, err := cli.Put(ctx, "z", strings.Repeat("y", 5<<18)); err != nil {
		t.Fatalf("put of 1.25 MiB to range 2 after the recovery: %v", err)
	}
	if list, err := cli.AlarmList(ctx); err != nil || len(list.Alarms) != 0 {
		t.Fatalf("alarms after the recovery: %v %v, want none", list, err)
	}
	st, err := cli.Status(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if st.DbSizeInUse > st.DbSize || st.DbSizeInUse >= quota/2 {
		t.Errorf("status after the recovery: in use %d of %d, want at most the size and under half the %d quota", st.DbSizeInUse, st.DbSize, quota)
	}
}

// TestStatusInUseWithinSize: after many small writes, all still in the
// write-ahead log, Status's size in use stays within its size, as etcd's
// does (etcdctl endpoint status prints the difference as a percentage "not
// in use"). Pebble's size of the current WAL file is the one it had when
// opened, which the writes since outgrow.
func TestStatusInUseWithinSize(t *testing.T) {
	cl := nodetest.Start(t, 1)
	cli, url := cl.Client(0), cl.Node(0).ClientURLs()[0]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	val := strings.Repeat("v", 512)
	for i := range 2000 {
		if _, err := cli.Put(ctx, "k"+string(rune('a'+i%26)), val); err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	st, err := cli.Status(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	if st.DbSizeInUse > st.DbSize {
		t.Fatalf("status: %d bytes in use of %d", st.DbSizeInUse, st.DbSize)
	}
	t.Logf("status: %d bytes in use of %d", st.DbSizeInUse, st.DbSize)
}
