package testport

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// TestPortsAreDistinctAndBindable: ports handed out in one process differ
// and can be listened on.
func TestPortsAreDistinctAndBindable(t *testing.T) {
	seen := map[int]bool{}
	for range 50 {
		p := Port(t)
		if p < lowPort || p >= lowPort+numPorts {
			t.Fatalf("port %d outside [%d, %d)", p, lowPort, lowPort+numPorts)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("port %d not bindable: %v", p, err)
		}
		l.Close()
	}
}

// TestPortsDistinctAcrossProcesses: a second process, started while this one
// holds its ports, is given none of them.
func TestPortsDistinctAcrossProcesses(t *testing.T) {
	if start := os.Getenv("TESTPORT_CHILD_START"); start != "" {
		// Start where the parent did, so only the locks keep them apart.
		n, err := strconv.Atoi(start)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		next = n
		mu.Unlock()
		for range 20 {
			os.Stdout.WriteString(strconv.Itoa(Port(t)) + "\n")
		}
		return
	}
	mine := map[int]bool{}
	first := Port(t)
	mine[first] = true
	for range 19 {
		mine[Port(t)] = true
	}
	for range 3 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestPortsDistinctAcrossProcesses$")
		cmd.Env = append(os.Environ(), "TESTPORT_CHILD_START="+strconv.Itoa(first-lowPort))
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("child: %v", err)
		}
		for _, line := range strings.Fields(string(out)) {
			p, err := strconv.Atoi(line)
			if err != nil {
				continue // the test framework's PASS line
			}
			if mine[p] {
				t.Fatalf("child was given port %d, held by the parent", p)
			}
		}
	}
}
