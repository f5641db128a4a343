package robustness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/cairn-kv/cairn/node/testport"
)

// buildCairn builds cmd/cairn (with build tags, if any) into dir.
func buildCairn(t testing.TB, dir string, tags ...string) string {
	t.Helper()
	bin := filepath.Join(dir, "cairn")
	args := []string{"build", "-o", bin}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	args = append(args, "./cmd/cairn")
	cmd := exec.Command(goTool(), args...)
	cmd.Dir = "../.."
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build cairn: %v\n%s", err, out)
	}
	return bin
}

func goTool() string {
	if p := filepath.Join(os.Getenv("GOROOT"), "bin", "go"); os.Getenv("GOROOT") != "" {
		return p
	}
	return "go"
}

// member is one cairn process. Its peers reach it through proxy (the
// advertised peer URL), which forwards to its own peer listener.
type member struct {
	name                        string
	dir                         string
	clientPort, peerPort, proxy int
	px                          *proxy
	args                        []string
	bin                         string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

func (m *member) endpoint() string { return fmt.Sprintf("127.0.0.1:%d", m.clientPort) }
func (m *member) journal() string  { return filepath.Join(m.dir, "journal") }
func (m *member) logPath() string  { return filepath.Join(m.dir, "cairn.log") }

// cluster is a Cairn cluster of processes on 127.0.0.1.
type cluster struct {
	t       testing.TB
	members []*member
}

// startCluster starts size members from bin with data under dir and waits
// until every member answers a linearizable read.
func startCluster(t testing.TB, bin, dir string, size int, extra ...string) *cluster {
	t.Helper()
	c := &cluster{t: t}
	var initial []string
	for i := 0; i < size; i++ {
		m := &member{name: fmt.Sprintf("m%d", i+1), dir: filepath.Join(dir, fmt.Sprintf("m%d", i+1)), bin: bin,
			clientPort: testport.Port(t), peerPort: testport.Port(t), proxy: testport.Port(t)}
		if err := os.MkdirAll(m.dir, 0o755); err != nil {
			t.Fatal(err)
		}
		initial = append(initial, fmt.Sprintf("%s=http://127.0.0.1:%d", m.name, m.proxy))
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		px, err := startProxy(fmt.Sprintf("127.0.0.1:%d", m.proxy), fmt.Sprintf("127.0.0.1:%d", m.peerPort), c.sourceOf)
		if err != nil {
			t.Fatal(err)
		}
		m.px = px
		client := fmt.Sprintf("http://127.0.0.1:%d", m.clientPort)
		m.args = []string{
			"--name", m.name, "--data-dir", filepath.Join(m.dir, "data"),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", m.peerPort),
			"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", m.proxy),
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", "robustness",
			"--heartbeat-interval", "50", "--election-timeout", "500",
			"--debug-journal", m.journal(), "--log-level", logLevel(),
		}
		m.args = append(m.args, extra...)
		if err := m.start(); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(c.close)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, m := range c.members {
		if err := m.waitReady(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func (m *member) start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	logf, err := os.OpenFile(m.logPath(), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(m.bin, m.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(exited) }()
	m.cmd, m.exited = cmd, exited
	return nil
}

// waitReady waits until the member answers a linearizable read.
func (m *member) waitReady(ctx context.Context) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.endpoint()}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	for {
		m.mu.Lock()
		exited := m.exited
		m.mu.Unlock()
		select {
		case <-exited:
			return fmt.Errorf("%s exited while starting:\n%s", m.name, tail(m.logPath()))
		default:
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := cli.Get(rctx, "robustness-ready-probe")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %v\n%s", m.name, err, tail(m.logPath()))
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// signal sends sig to the member's process.
func (m *member) signal(sig syscall.Signal) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil || m.cmd.Process == nil {
		return errors.New("not running")
	}
	return m.cmd.Process.Signal(sig)
}

// kill kills the process with SIGKILL and waits for it to be gone.
func (m *member) kill() error {
	if err := m.signal(syscall.SIGKILL); err != nil {
		return err
	}
	m.mu.Lock()
	exited := m.exited
	m.mu.Unlock()
	<-exited
	return nil
}

// stop ends the process with SIGTERM (SIGKILL after 20 s) and waits.
func (m *member) stop() {
	m.mu.Lock()
	exited := m.exited
	m.mu.Unlock()
	if exited == nil {
		return
	}
	_ = m.signal(syscall.SIGCONT)
	_ = m.signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(20 * time.Second):
		_ = m.signal(syscall.SIGKILL)
		<-exited
	}
}

func (c *cluster) endpoints() []string {
	var eps []string
	for _, m := range c.members {
		eps = append(eps, m.endpoint())
	}
	return eps
}

// stop ends every member gracefully.
func (c *cluster) stop() {
	for _, m := range c.members {
		m.stop()
	}
}

func (c *cluster) close() {
	c.stop()
	for _, m := range c.members {
		if m.px != nil {
			m.px.close()
		}
	}
}

// leader returns the member that reports itself leader, waiting for one.
func (c *cluster) leader(ctx context.Context) (*member, error) {
	for {
		for _, m := range c.members {
			cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.endpoint()}, DialTimeout: time.Second, Logger: zap.NewNop()})
			if err != nil {
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := cli.Status(sctx, m.endpoint())
			cancel()
			cli.Close()
			if err == nil && st.Leader != 0 && st.Leader == st.Header.MemberId {
				return m, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no leader: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// memberID returns a member's id as it reports it.
func (m *member) memberID(ctx context.Context) (uint64, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.endpoint()}, DialTimeout: time.Second, Logger: zap.NewNop()})
	if err != nil {
		return 0, err
	}
	defer cli.Close()
	st, err := cli.Status(ctx, m.endpoint())
	if err != nil {
		return 0, err
	}
	return st.Header.MemberId, nil
}

func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}

// proxy forwards TCP connections from listen to target, the member's peer
// listener. A partition cuts sources: the connections from a cut member
// (found by the process owning the connecting socket) are dropped, open
// and new, until heal; cutting "*" drops every connection.
type proxy struct {
	l      net.Listener
	target string
	// source names the member that opened a connection ("" if unknown).
	source func(remote net.Addr) string

	mu    sync.Mutex
	cut   map[string]bool
	conns map[net.Conn]string // → source
	wg    sync.WaitGroup
}

func startProxy(listen, target string, source func(net.Addr) string) (*proxy, error) {
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, err
	}
	p := &proxy{l: l, target: target, source: source, cut: map[string]bool{}, conns: map[net.Conn]string{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// REQUIRES: p.mu
func (p *proxy) isCutLocked(src string) bool { return p.cut["*"] || p.cut[src] }

func (p *proxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.l.Accept()
		if err != nil {
			return
		}
		src := p.source(in.RemoteAddr())
		p.mu.Lock()
		cut := p.isCutLocked(src)
		if !cut {
			p.conns[in] = src
		}
		p.mu.Unlock()
		if cut {
			in.Close()
			continue
		}
		p.wg.Add(1)
		go p.forward(in, src)
	}
}

func (p *proxy) forward(in net.Conn, src string) {
	defer p.wg.Done()
	out, err := net.DialTimeout("tcp", p.target, time.Second)
	if err != nil {
		p.drop(in)
		return
	}
	p.mu.Lock()
	if p.isCutLocked(src) {
		p.mu.Unlock()
		out.Close()
		p.drop(in)
		return
	}
	p.conns[out] = src
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(out, in); done <- struct{}{} }()
	go func() { _, _ = io.Copy(in, out); done <- struct{}{} }()
	<-done
	p.drop(in)
	p.drop(out)
	<-done
}

func (p *proxy) drop(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

// block drops the connections from the given sources ("*": all) and
// refuses new ones from them until heal.
func (p *proxy) block(sources ...string) {
	p.mu.Lock()
	var victims []net.Conn
	for _, s := range sources {
		p.cut[s] = true
	}
	for c, src := range p.conns {
		if p.isCutLocked(src) {
			victims = append(victims, c)
			delete(p.conns, c)
		}
	}
	p.mu.Unlock()
	for _, c := range victims {
		c.Close()
	}
}

func (p *proxy) heal() {
	p.mu.Lock()
	p.cut = map[string]bool{}
	p.mu.Unlock()
}

func (p *proxy) close() {
	p.block("*")
	p.l.Close()
	p.wg.Wait()
}

// isolate cuts m off from every other member, both ways: m's proxy drops
// everything, the others' proxies drop what m opened.
func (c *cluster) isolate(m *member) {
	for _, o := range c.members {
		if o == m {
			o.px.block("*")
		} else {
			o.px.block(m.name)
		}
	}
}

// cut cuts a and b off from each other, both ways, and from no one else:
// each one's proxy drops what the other opened. Every connection between
// members (raft and the node-to-node service alike) goes through the
// peer ports, so this is a partition between the two alone.
func (c *cluster) cut(a, b *member) {
	a.px.block(b.name)
	b.px.block(a.name)
}

func (c *cluster) heal() {
	for _, m := range c.members {
		m.px.heal()
	}
}

// sourceOf names the member whose process owns the local end of a TCP
// connection from remote (a 127.0.0.1 address): the socket's inode from
// /proc/net/tcp, then the process holding it among the members'.
func (c *cluster) sourceOf(remote net.Addr) string {
	addr, ok := remote.(*net.TCPAddr)
	if !ok {
		return ""
	}
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return ""
	}
	want := fmt.Sprintf("0100007F:%04X", addr.Port)
	inode := ""
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 9 && f[1] == want {
			inode = f[9]
			break
		}
	}
	if inode == "" {
		return ""
	}
	target := "socket:[" + inode + "]"
	for _, m := range c.members {
		m.mu.Lock()
		cmd := m.cmd
		m.mu.Unlock()
		if cmd == nil || cmd.Process == nil {
			continue
		}
		fds := fmt.Sprintf("/proc/%d/fd", cmd.Process.Pid)
		ents, err := os.ReadDir(fds)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if l, err := os.Readlink(filepath.Join(fds, e.Name())); err == nil && l == target {
				return m.name
			}
		}
	}
	return ""
}

// logLevel is the members' --log-level: warn, or what CAIRN_LOG_LEVEL asks
// for (debug or info, to read a failure's member logs).
func logLevel() string {
	if l := os.Getenv("CAIRN_LOG_LEVEL"); l != "" {
		return l
	}
	return "warn"
}
