package node_test

import (
	"context"
	"fmt"
	"math/rand"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/cairn-kv/cairn/node/nodetest"
)

// The recipes of etcd's client concurrency package (Mutex, Election, STM)
// against a real node: they rely on leases with keepalives, sorted and
// revision-filtered ranges (first/last create, max create revision),
// watches from a revision, and Txn compares on create and mod revisions,
// so they check those together as applications use them.

// TestConcurrencyMutex: 20 goroutines, each with its own session, take one
// Mutex in turns for a fixed number of rounds. Inside, a goroutine checks
// that no other is inside and increments two counters by read, yield,
// write (one in memory, one a key): any overlap shows as a detected
// overlap or a lost update.
func TestConcurrencyMutex(t *testing.T) {
	cl := nodetest.Start(t, 1)
	clients := []*clientv3.Client{cl.Client(0), cl.Client(0), cl.Client(0), cl.Client(0)}
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	const workers, rounds = 20, 5
	var inside, overlaps, counter atomic.Int64
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		c := clients[w%len(clients)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- mutexWorker(ctx, c, rounds, func() error {
				if inside.Add(1) != 1 {
					overlaps.Add(1)
				}
				defer inside.Add(-1)
				v := counter.Load()
				runtime.Gosched()
				counter.Store(v + 1)
				return incrementKey(ctx, c, "mutex-counter")
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if o := overlaps.Load(); o != 0 {
		t.Fatalf("%d times a goroutine entered the critical section while another was inside", o)
	}
	if got := counter.Load(); got != workers*rounds {
		t.Fatalf("in-memory counter = %d, want %d", got, workers*rounds)
	}
	if got := counterValue(t, clients[0], "mutex-counter"); got != workers*rounds {
		t.Fatalf("key counter = %d, want %d", got, workers*rounds)
	}
	if kvs := keysUnder(t, clients[0], "/mutex/"); len(kvs) != 0 {
		t.Fatalf("lock keys left: %v", kvs)
	}
}

// mutexWorker opens a session and runs critical rounds times under the
// Mutex, then closes the session (revoking its lease).
func mutexWorker(ctx context.Context, c *clientv3.Client, rounds int, critical func() error) error {
	s, err := concurrency.NewSession(c, concurrency.WithTTL(30), concurrency.WithContext(ctx))
	if err != nil {
		return err
	}
	defer s.Close()
	m := concurrency.NewMutex(s, "/mutex")
	for i := 0; i < rounds; i++ {
		if err := m.Lock(ctx); err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		if err := critical(); err != nil {
			return err
		}
		if err := m.Unlock(ctx); err != nil {
			return fmt.Errorf("unlock: %w", err)
		}
	}
	return nil
}

// TestConcurrencyElectionFailover: three candidates on their own sessions.
// The first leads; the second waits until the first's session is closed,
// then leads and proclaims; the third waits until the second's lease is
// revoked. An observer sees each leader and the proclamation, in order.
func TestConcurrencyElectionFailover(t *testing.T) {
	cl := nodetest.Start(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	session := func() *concurrency.Session {
		s, err := concurrency.NewSession(cl.Client(0), concurrency.WithTTL(30))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	}
	s1, s2, s3, so := session(), session(), session(), session()
	const name = "/failover"

	octx, ocancel := context.WithCancel(ctx)
	defer ocancel()
	observed := concurrency.NewElection(so, name).Observe(octx)
	// expectObserved takes the observer's next value; the steps below wait
	// for it before changing the leader again, so none can be skipped.
	expectObserved := func(want string) {
		t.Helper()
		select {
		case r, ok := <-observed:
			if !ok || string(r.Kvs[0].Value) != want {
				t.Fatalf("observed %v (open %v), want %q", r, ok, want)
			}
		case <-ctx.Done():
			t.Fatalf("observed nothing, want %q", want)
		}
	}

	e1 := concurrency.NewElection(s1, name)
	if err := e1.Campaign(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	expectObserved("one")
	e2, e3 := concurrency.NewElection(s2, name), concurrency.NewElection(s3, name)
	won2, won3 := make(chan error, 1), make(chan error, 1)
	go func() { won2 <- e2.Campaign(ctx, "two") }()
	nodetest.Eventually(t, "the second candidate waits", func() bool { return len(keysUnder(t, s1.Client(), name+"/")) == 2 })
	go func() { won3 <- e3.Campaign(ctx, "three") }()
	nodetest.Eventually(t, "the third candidate waits", func() bool { return len(keysUnder(t, s1.Client(), name+"/")) == 3 })
	select {
	case err := <-won2:
		t.Fatalf("second candidate elected while the first leads: %v", err)
	case err := <-won3:
		t.Fatalf("third candidate elected while the first leads: %v", err)
	default:
	}
	expectLeader := func(e *concurrency.Election, want string) {
		t.Helper()
		r, err := e.Leader(ctx)
		if err != nil || string(r.Kvs[0].Value) != want {
			t.Fatalf("leader: %v %v, want %q", r, err, want)
		}
	}
	expectLeader(e2, "one")

	// The leader's session ends: the second takes over.
	if err := s1.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-won2; err != nil {
		t.Fatal(err)
	}
	expectLeader(e3, "two")
	expectObserved("two")
	if err := e2.Proclaim(ctx, "two again"); err != nil {
		t.Fatal(err)
	}
	expectObserved("two again")
	select {
	case err := <-won3:
		t.Fatalf("third candidate elected while the second leads: %v", err)
	default:
	}

	// The new leader's lease is revoked: the third takes over.
	if _, err := s2.Client().Revoke(ctx, s2.Lease()); err != nil {
		t.Fatal(err)
	}
	if err := <-won3; err != nil {
		t.Fatal(err)
	}
	expectLeader(e2, "three")
	expectObserved("three")
	if err := e2.Proclaim(ctx, "not any more"); err != concurrency.ErrElectionNotLeader {
		t.Fatalf("proclaim by a deposed leader: %v, want %v", err, concurrency.ErrElectionNotLeader)
	}
}

// TestConcurrencySTM: goroutines move random amounts between accounts in
// software transactions (serializable snapshot isolation, etcd's default)
// while an auditor sums every account in its own transactions: every sum
// it sees and the final one equal the initial total, and no account goes
// negative.
func TestConcurrencySTM(t *testing.T) {
	c := nodetest.Start(t, 1).Client(0)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	const accounts, initial, workers, transfers = 5, 100, 8, 15
	const total = accounts * initial
	account := func(i int) string { return fmt.Sprintf("/bank/%d", i) }
	for i := 0; i < accounts; i++ {
		if _, err := c.Put(ctx, account(i), strconv.Itoa(initial)); err != nil {
			t.Fatal(err)
		}
	}
	balance := func(stm concurrency.STM, i int) (int, error) {
		return strconv.Atoi(stm.Get(account(i)))
	}

	var applies atomic.Int64
	errs := make(chan error, workers+1)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		rng := rand.New(rand.NewSource(int64(w) + 1))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < transfers; i++ {
				from, to := rng.Intn(accounts), rng.Intn(accounts-1)
				if to >= from {
					to++
				}
				amount := rng.Intn(initial/2) + 1
				_, err := concurrency.NewSTM(c, func(stm concurrency.STM) error {
					applies.Add(1)
					a, err := balance(stm, from)
					if err != nil {
						return err
					}
					b, err := balance(stm, to)
					if err != nil {
						return err
					}
					move := min(amount, a)
					stm.Put(account(from), strconv.Itoa(a-move))
					stm.Put(account(to), strconv.Itoa(b+move))
					return nil
				}, concurrency.WithAbortContext(ctx))
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	audit := func() (int, error) {
		sum := 0
		_, err := concurrency.NewSTM(c, func(stm concurrency.STM) error {
			sum = 0
			for i := 0; i < accounts; i++ {
				b, err := balance(stm, i)
				if err != nil {
					return err
				}
				if b < 0 {
					return fmt.Errorf("account %d has %d", i, b)
				}
				sum += b
			}
			return nil
		}, concurrency.WithAbortContext(ctx))
		return sum, err
	}
	stop := make(chan struct{})
	audits := make(chan int, 1)
	go func() {
		count := 0
		defer func() { audits <- count }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			sum, err := audit()
			if err == nil && sum != total {
				err = fmt.Errorf("audit %d saw a total of %d, want %d", count, sum, total)
			}
			if err != nil {
				errs <- err
				return
			}
			count++
		}
	}()
	wg.Wait()
	close(stop)
	t.Logf("%d audits; %d transaction attempts for %d transfers", <-audits, applies.Load(), workers*transfers)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if sum, err := audit(); err != nil || sum != total {
		t.Fatalf("final total %d (%v), want %d", sum, err, total)
	}
}
