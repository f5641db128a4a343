package testport

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
)

// The ports handed out: below Linux's default ephemeral range (32768–60999)
// and above the ones services commonly use.
const (
	lowPort  = 20000
	numPorts = 12000
)

var (
	mu    sync.Mutex
	next  = -1
	held  []*os.File // kept open: the locks last as long as the process
	lockD = filepath.Join(os.TempDir(), "cairn-testports")
)

// Port returns a 127.0.0.1 TCP port that is free and that no other process
// using this package will be given while this one runs.
func Port(tb testing.TB) int {
	tb.Helper()
	p, err := pick()
	if err != nil {
		tb.Fatalf("testport: %v", err)
	}
	return p
}

// Addr returns "127.0.0.1:<port>" for a port from Port.
func Addr(tb testing.TB) string {
	tb.Helper()
	return fmt.Sprintf("127.0.0.1:%d", Port(tb))
}

func pick() (int, error) {
	mu.Lock()
	defer mu.Unlock()
	if next < 0 {
		// Processes start at different places so they rarely contend for locks.
		next = (os.Getpid() * 7919) % numPorts
	}
	if err := os.MkdirAll(lockD, 0o777); err != nil {
		return 0, err
	}
	for range numPorts {
		p := lowPort + next
		next = (next + 1) % numPorts
		if claim(p) {
			return p, nil
		}
	}
	return 0, fmt.Errorf("no free port in %d-%d", lowPort, lowPort+numPorts-1)
}

// claim locks p's file and checks the port can be bound; the lock is kept on
// success.
func claim(p int) bool {
	f, err := os.OpenFile(filepath.Join(lockD, fmt.Sprint(p)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return false
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return false
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
	if err != nil {
		f.Close()
		return false
	}
	l.Close()
	held = append(held, f)
	return true
}
