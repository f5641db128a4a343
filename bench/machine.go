package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
)

// machine describes where a run happened, for the report.
type machine struct {
	cpus    int
	cpu     string // model name
	goVer   string
	kernel  string
	dataDir string // root of the servers' data directories
	device  string // what holds dataDir: "source (fstype) at mountpoint"
}

func describeMachine(dataDir string) machine {
	m := machine{cpus: runtime.NumCPU(), goVer: runtime.Version(), dataDir: dataDir, cpu: "unknown", kernel: "unknown"}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = "Linux " + strings.TrimSpace(string(b))
	}
	m.device = deviceOf(dataDir)
	return m
}

// deviceOf names the mount that holds path, from /proc/self/mountinfo: the
// mount with the longest mount point that is a prefix of path.
func deviceOf(path string) string {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "unknown"
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	best, bestLen := "unknown", -1
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		a, b := strings.Fields(pre), strings.Fields(post)
		if len(a) < 5 || len(b) < 2 {
			continue
		}
		mp := a[4]
		if !within(abs, mp) || len(mp) <= bestLen {
			continue
		}
		best, bestLen = fmt.Sprintf("%s (%s) mounted at %s", b[1], b[0], mp), len(mp)
	}
	return best
}

func within(path, dir string) bool {
	if dir == "/" {
		return true
	}
	return path == dir || strings.HasPrefix(path, dir+"/")
}
