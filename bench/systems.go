package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// startTimeout bounds how long a server may take to answer its first read.
const startTimeout = 60 * time.Second

// system is one store under test, as the report names it.
type system struct {
	name  string // column name in the report: "etcd", "cairn", "ceiling"
	label string // longer description for the report
	nodes int    // cluster size: 1 or 3 members on 127.0.0.1
	// command returns the argv that runs one member.
	command func(env *environment, m memberSpec) []string
	// scenarios limits the system to these scenarios (nil: every one), to
	// keep the default run short.
	scenarios []string
	// scaleOutCommand, if set, replaces command in the scale-out scenario
	// (scaleout.go): cairn-sharded-3 runs 8 ranges on every member in put,
	// and 3 replicas per range, 4 ranges per member there.
	scaleOutCommand func(env *environment, m memberSpec) []string
	// sec is how clients reach the system: plain, client TLS or auth.
	sec security
}

// shardedSplits cut the key space into 8 ranges for the sharded systems.
// etcd's benchmark tool writes 8-byte keys holding the varint of a random
// number below --key-space-size (100,000): their first byte is an even
// value from 0x80 to 0xfe for all but the first 64 numbers, so these seven
// keys share the writes about evenly among the ranges.
const shardedSplits = "\x90,\xa0,\xb0,\xc0,\xd0,\xe0,\xf0"

// memberSpec is one member of a system's cluster.
type memberSpec struct {
	name               string
	dir                string // data directory
	clientURL, peerURL string
	initialCluster     string // name=peerURL,… of every member
	// certs are the client TLS files of a secTLS system (clientURL is
	// https), nil otherwise.
	certs *certFiles
}

// environment is what systems need from the harness: where the binaries are,
// and the knobs of the scale-out systems.
type environment struct {
	self  string // this binary, for the serve-* subcommands
	cairn string // the cairn binary built for this run
	// rangeReplicas is the --range-replicas of the scale-out sharded
	// systems; 0 leaves the flag out (the server's default), -1 puts every
	// range on every member.
	rangeReplicas int
}

// securedScenarios are what the TLS and auth systems run.
var securedScenarios = []string{"put", "range-linearizable"}

func systems() []system {
	etcd := func(env *environment, m memberSpec) []string {
		argv := []string{env.self, "serve-etcd", "-name", m.name, "-data-dir", m.dir, "-listen-client-urls", m.clientURL,
			"-listen-peer-urls", m.peerURL, "-initial-cluster", m.initialCluster}
		return append(argv, etcdTLSArgs(m.certs)...)
	}
	cairn := func(env *environment, m memberSpec) []string {
		argv := []string{env.cairn, "--name", m.name, "--data-dir", m.dir,
			"--listen-client-urls", m.clientURL, "--listen-peer-urls", m.peerURL,
			"--initial-cluster", m.initialCluster, "--log-level", "warn", "--enable-pprof"}
		return append(argv, cairnTLSArgs(m.certs)...)
	}
	singleGroup := func(env *environment, m memberSpec) []string {
		return append(cairn(env, m), "--single-group")
	}
	sharded := func(env *environment, m memberSpec) []string {
		return append(cairn(env, m), "--single-group=false", "--initial-split-keys", shardedSplits)
	}
	// scaleOut is sharded mode as the scale-out scenario runs it on n
	// members: 3 replicas per range, 3 placement voters, 4n ranges split
	// where the benchmark's keys fall.
	scaleOut := func(n int) func(env *environment, m memberSpec) []string {
		return func(env *environment, m memberSpec) []string {
			argv := append(cairn(env, m), "--single-group=false", "--placement-replicas", "3",
				"--initial-split-keys", scaleOutSplits(scaleOutRangesPerMember*n))
			if env.rangeReplicas != 0 {
				argv = append(argv, "--range-replicas", strconv.Itoa(env.rangeReplicas))
			}
			return argv
		}
	}
	scaleOutOnly := []string{"scale-out"}
	return []system{
		{name: "etcd", label: "etcd 3.7.3 (embed, own process)", nodes: 1, command: etcd},
		{name: "cairn", label: "Cairn single-group (cmd/cairn binary)", nodes: 1, command: singleGroup},
		{
			name: "ceiling", label: "no-op KV server (ceiling)", nodes: 1,
			command: func(env *environment, m memberSpec) []string {
				return []string{env.self, "serve-ceiling", "-listen-client-urls", m.clientURL}
			},
		},
		{name: "etcd-3", label: "etcd 3.7.3, 3 members (embed, a process each)", nodes: 3, command: etcd},
		{name: "cairn-3", label: "Cairn single-group, 3 members (a process each)", nodes: 3, command: singleGroup},
		{name: "cairn-sharded", label: "Cairn sharded, 8 ranges (cmd/cairn binary)", nodes: 1, command: sharded,
			scenarios: []string{"put", "range-linearizable"}},
		{name: "cairn-sharded-3", label: "Cairn sharded, 8 ranges, 3 members (a process each; scale-out: 12 ranges, 3 replicas each)", nodes: 3, command: sharded,
			scenarios: []string{"put", "scale-out"}, scaleOutCommand: scaleOut(3)},
		// The scale-out scenario's larger clusters (scaleout.go).
		{name: "cairn-6", label: "Cairn single-group, 6 members (a process each)", nodes: 6, command: singleGroup, scenarios: scaleOutOnly},
		{name: "cairn-9", label: "Cairn single-group, 9 members (a process each)", nodes: 9, command: singleGroup, scenarios: scaleOutOnly},
		{name: "cairn-sharded-6", label: "Cairn sharded, 24 ranges, 3 replicas each, 6 members (a process each)", nodes: 6, command: scaleOut(6), scenarios: scaleOutOnly},
		// etcd and Cairn single-group with client TLS (client certificates
		// required) and with auth on (a non-root user's requests); the
		// issue's put and range figures only.
		{name: "etcd-tls", label: "etcd 3.7.3, client TLS with client certificates", nodes: 1, command: etcd, sec: secTLS, scenarios: securedScenarios},
		{name: "cairn-tls", label: "Cairn single-group, client TLS with client certificates", nodes: 1, command: singleGroup, sec: secTLS, scenarios: securedScenarios},
		{name: "etcd-auth", label: "etcd 3.7.3, auth on (simple tokens), a non-root user", nodes: 1, command: etcd, sec: secAuth, scenarios: securedScenarios},
		{name: "cairn-auth", label: "Cairn single-group, auth on (simple tokens), a non-root user", nodes: 1, command: singleGroup, sec: secAuth, scenarios: securedScenarios},
		{name: "cairn-sharded-9", label: "Cairn sharded, 36 ranges, 3 replicas each, 9 members (a process each)", nodes: 9, command: scaleOut(9), scenarios: scaleOutOnly},
	}
}

// instance is a started system: its processes and the endpoints clients use.
type instance struct {
	sys       system
	endpoints []string // host:port, as etcd's benchmark tool wants them
	procs     []*exec.Cmd
	exited    []chan struct{}
	logs      []string   // paths of the members' stderr
	dirs      []string   // the members' data directories
	certs     *certFiles // client TLS files of a secTLS system, else nil
	authOn    bool       // auth is on: clients log in as benchUser
}

// startSystem starts every member of sys with data under dir and waits until the
// cluster answers a read.
//
// Ports are picked free and then released for the server to bind, so
// another process can take one in between; a start that fails that way is
// tried again on fresh ports (in a fresh directory).
func startSystem(ctx context.Context, env *environment, sys system, dir string) (*instance, error) {
	return startSystemCapped(ctx, env, sys, dir, nil)
}

// startSystemCapped is startSystem with each member moved into its own group
// of cpu (nil: not capped) right after exec; a retried start on fresh ports
// reuses the groups of the failed attempt's members, which have exited.
func startSystemCapped(ctx context.Context, env *environment, sys system, dir string, cpu *cpuCap) (*instance, error) {
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		d := dir
		if attempt > 0 {
			d = fmt.Sprintf("%s-retry%d", dir, attempt)
		}
		var in *instance
		if cpu != nil {
			cpu.reset()
		}
		in, err = startSystemOnce(ctx, env, sys, d, cpu)
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			return in, err
		}
	}
	return nil, err
}

func startSystemOnce(ctx context.Context, env *environment, sys system, dir string, cpu *cpuCap) (*instance, error) {
	in := &instance{sys: sys}
	scheme := "http://"
	if sys.sec == secTLS {
		certs, err := makeCerts(filepath.Join(dir, "certs"))
		if err != nil {
			return nil, fmt.Errorf("bench: certificates: %w", err)
		}
		in.certs, scheme = certs, "https://"
	}
	specs := make([]memberSpec, sys.nodes)
	var initial []string
	for i := range specs {
		client, peer := freePort(), freePort()
		if client == "" || peer == "" {
			return nil, errors.New("bench: no free port")
		}
		specs[i] = memberSpec{name: fmt.Sprintf("m%d", i+1), clientURL: scheme + client, peerURL: "http://" + peer, certs: in.certs}
		initial = append(initial, specs[i].name+"="+specs[i].peerURL)
	}
	for i, spec := range specs {
		client := strings.TrimPrefix(spec.clientURL, scheme)
		mdir := filepath.Join(dir, fmt.Sprintf("%s-%d", sys.name, i))
		if err := os.MkdirAll(mdir, 0o755); err != nil {
			return nil, err
		}
		spec.dir = filepath.Join(mdir, "data")
		spec.initialCluster = strings.Join(initial, ",")
		argv := sys.command(env, spec)
		logPath := filepath.Join(mdir, "server.log")
		logf, err := os.Create(logPath)
		if err != nil {
			return nil, err
		}
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Dir = mdir
		cmd.Stdout, cmd.Stderr = logf, logf
		// The server dies with the harness, even on kill -9 of the harness.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			logf.Close()
			return nil, fmt.Errorf("bench: start %s: %w", sys.name, err)
		}
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
		in.procs = append(in.procs, cmd)
		in.exited = append(in.exited, done)
		in.logs = append(in.logs, logPath)
		in.endpoints = append(in.endpoints, client)
		in.dirs = append(in.dirs, spec.dir)
		if cpu != nil {
			if err := cpu.add(cmd.Process.Pid); err != nil {
				in.stop()
				return nil, err
			}
		}
	}
	if err := in.waitReady(ctx); err != nil {
		in.stop()
		return nil, err
	}
	if sys.sec == secAuth {
		if err := in.enableAuth(ctx); err != nil {
			in.stop()
			return nil, err
		}
	}
	return in, nil
}

// waitReady waits until a linearizable read succeeds against every member.
func (in *instance) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(startTimeout)
	for i, ep := range in.endpoints {
		cli, err := in.newClient(func(c *clientv3.Config) { c.Endpoints = []string{ep} })
		if err != nil {
			return err
		}
		for {
			select {
			case <-in.exited[i]:
				cli.Close()
				return fmt.Errorf("bench: %s exited while starting; log %s:\n%s", in.sys.name, in.logs[i], tail(in.logs[i], 20))
			default:
			}
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := cli.Get(rctx, "bench-ready-probe")
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				cli.Close()
				return fmt.Errorf("bench: %s does not answer reads after %v: %v", in.sys.name, startTimeout, err)
			}
			select {
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
			}
		}
		cli.Close()
	}
	return nil
}

// peakRSS returns the largest peak resident set (VmHWM) over the members, in
// bytes, 0 if unknown.
func (in *instance) peakRSS() int64 {
	var max int64
	for _, v := range in.memberRSS() {
		if v > max {
			max = v
		}
	}
	return max
}

// memberRSS returns each member's peak resident set (VmHWM) in bytes, 0
// where unknown.
func (in *instance) memberRSS() []int64 {
	out := make([]int64, len(in.procs))
	for i, c := range in.procs {
		if c.Process == nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.Process.Pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				out[i] = kb * 1024
			}
		}
	}
	return out
}

// stop terminates every member (SIGTERM, then SIGKILL after 10s) and waits.
func (in *instance) stop() {
	for _, c := range in.procs {
		_ = c.Process.Signal(syscall.SIGTERM)
	}
	for i, c := range in.procs {
		select {
		case <-in.exited[i]:
		case <-time.After(10 * time.Second):
			_ = c.Process.Kill()
			<-in.exited[i]
		}
	}
}

// freePort returns a 127.0.0.1 port that was free a moment ago.
func freePort() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return ""
	}
	defer l.Close()
	return l.Addr().String()
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
