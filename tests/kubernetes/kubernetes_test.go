package kubernetes

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/cairn-kv/cairn/node/testport"
)

// splitKeys cut the key space into six ranges through the keys the tests
// write: the etcd3 tests' /pods/<namespace>/<name> (between the namespaces
// first and second, and inside test-ns), the cacher tests'
// /registry/pods/<namespace>/<name> (the same two cuts), and the keys at
// the root (compact_rev_key, the compactor's; increaseRV, written to move
// the revision) apart from all of them.
var splitKeys = []string{"/pods/second/", "/pods/test-ns/m", "/registry/pods/second/", "/registry/pods/test-ns/m", "compact_rev_key"}

// mode is one server the suites run against.
type mode struct {
	name string
	// cairn: the server is cmd/cairn with args; otherwise etcd 3.7.3.
	cairn bool
	args  []string
}

var modes = []mode{
	{name: "etcd"},
	{name: "single-group", cairn: true, args: []string{"--single-group"}},
	{name: "default", cairn: true},
	{name: "ranges", cairn: true, args: []string{"--initial-split-keys", strings.Join(splitKeys, ",")}},
}

// progressTests are the etcd3 tests that start their etcd with a watch
// progress notify interval of 1 s (-test.run/-test.skip syntax).
const progressTests = `^TestWatch$/^(ProgressNotify|WatchDispatchBookmarkEvents)$`

// pass is one run of a test binary against a fresh server.
type pass struct {
	pkg      string // etcd3 or cacher: the package under pkg/storage
	progress string // the server's --watch-progress-notify-interval; "" for its default
	run      string
	skip     string
}

var passes = []pass{
	{pkg: "etcd3", skip: progressTests},
	{pkg: "etcd3", progress: "1s", run: progressTests},
	{pkg: "cacher"},
}

func TestKubernetes(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			bins := prepare(t)
			server := buildServer(t, m)
			out := filepath.Join(workDir(t), "results", m.name)
			if err := os.RemoveAll(out); err != nil {
				t.Fatal(err)
			}
			if err := os.MkdirAll(out, 0o755); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			for i, p := range passes {
				runPass(t, m, server, bins, p, filepath.Join(out, fmt.Sprintf("%d-%s", i+1, p.pkg)))
			}
			t.Logf("%s: the passes took %v; outputs and server logs in %s", m.name, time.Since(start).Round(time.Second), out)
		})
	}
}

// workDir is the module's scratch directory, ignored by git.
func workDir(t testing.TB) string {
	d, err := filepath.Abs("_work")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// binaries are the patched apiserver's compiled test binaries.
type binaries struct {
	src  string            // the patched copy of k8s.io/apiserver
	test map[string]string // package (etcd3, cacher) → test binary
}

var (
	prepareOnce sync.Once
	prepared    binaries
	prepareErr  error
)

// prepare copies k8s.io/apiserver at the version go.mod pins from the
// module cache into _work/apiserver, applies apiserver.patch and compiles
// the test binaries of pkg/storage/etcd3 and pkg/storage/cacher, once per
// process.
func prepare(t *testing.T) binaries {
	t.Helper()
	prepareOnce.Do(func() { prepared, prepareErr = doPrepare(t) })
	if prepareErr != nil {
		t.Fatal(prepareErr)
	}
	return prepared
}

func doPrepare(t *testing.T) (binaries, error) {
	start := time.Now()
	dir, err := goOutput(".", "mod", "download", "-json", "k8s.io/apiserver")
	if err != nil {
		return binaries{}, err
	}
	m := regexp.MustCompile(`"Dir": "([^"]+)"`).FindStringSubmatch(dir)
	if m == nil {
		return binaries{}, fmt.Errorf("go mod download k8s.io/apiserver: no Dir in %s", dir)
	}
	work := workDir(t)
	src := filepath.Join(work, "apiserver")
	if err := os.RemoveAll(src); err != nil {
		return binaries{}, err
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		return binaries{}, err
	}
	// The module cache is read-only: copy without its modes, then patch.
	if out, err := exec.Command("cp", "-r", "--no-preserve=mode", m[1], src).CombinedOutput(); err != nil {
		return binaries{}, fmt.Errorf("copy %s: %v\n%s", m[1], err, out)
	}
	patch, err := filepath.Abs("apiserver.patch")
	if err != nil {
		return binaries{}, err
	}
	cmd := exec.Command("patch", "-p1", "--forward", "--batch", "-i", patch)
	cmd.Dir = src
	if out, err := cmd.CombinedOutput(); err != nil {
		return binaries{}, fmt.Errorf("apiserver.patch does not apply to %s: %v\n%s", m[1], err, out)
	}
	bins := binaries{src: src, test: map[string]string{}}
	for _, pkg := range []string{"etcd3", "cacher"} {
		bin := filepath.Join(work, "bin", pkg+".test")
		if _, err := goOutput(src, "test", "-c", "-o", bin, "./pkg/storage/"+pkg); err != nil {
			return binaries{}, err
		}
		bins.test[pkg] = bin
	}
	t.Logf("copied, patched and compiled k8s.io/apiserver's storage tests in %v", time.Since(start).Round(time.Second))
	return bins, nil
}

// buildServer builds the mode's server binary into _work/bin.
func buildServer(t *testing.T, m mode) string {
	t.Helper()
	start := time.Now()
	var bin string
	var err error
	if m.cairn {
		bin = filepath.Join(workDir(t), "bin", "cairn")
		_, err = goOutput("../..", "build", "-o", bin, "./cmd/cairn")
	} else {
		bin = filepath.Join(workDir(t), "bin", "etcd")
		_, err = goOutput(".", "build", "-o", bin, "go.etcd.io/etcd/server/v3")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("built %s in %v", filepath.Base(bin), time.Since(start).Round(time.Second))
	return bin
}

func goOutput(dir string, args ...string) (string, error) {
	goTool := "go"
	if root := os.Getenv("GOROOT"); root != "" {
		goTool = filepath.Join(root, "bin", "go")
	}
	cmd := exec.Command(goTool, args...)
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go %s (in %s): %v\n%s", strings.Join(args, " "), dir, err, stderr.String())
	}
	return string(out), nil
}

// runPass starts a fresh server, runs one test binary against it and
// reports the failed tests that are not harness artefacts.
func runPass(t *testing.T, m mode, server string, bins binaries, p pass, out string) {
	t.Helper()
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	srv := startServer(t, m, server, p.progress, out)
	defer srv.stop(t)

	args := []string{"-test.v", "-test.count=1", "-test.timeout=30m",
		// Tests that each wanted their own etcd now wait for the shared one
		// and keep their parallel slot meanwhile (see the hook).
		"-test.parallel=64"}
	if p.run != "" {
		args = append(args, "-test.run", p.run)
	}
	if p.skip != "" {
		args = append(args, "-test.skip", p.skip)
	}
	cmd := exec.Command(bins.test[p.pkg], args...)
	cmd.Dir = filepath.Join(bins.src, "pkg", "storage", p.pkg) // for testdata
	cmd.Env = append(os.Environ(), "CAIRN_K8S_ENDPOINT="+srv.endpoint, "CAIRN_K8S_PROGRESS_NOTIFY_INTERVAL="+p.progress)
	logPath := filepath.Join(out, "test.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	runErr := cmd.Run()
	logf.Close()
	took := time.Since(start).Round(time.Second)

	res, err := parseResults(logPath)
	if err != nil {
		t.Fatal(err)
	}
	var failed, artefactFailed []string
	for _, name := range res.leafFailures() {
		if isArtefact(p.pkg, name) {
			artefactFailed = append(artefactFailed, name)
		} else {
			failed = append(failed, name)
		}
	}
	label := p.pkg
	if p.progress != "" {
		label += " (progress notify " + p.progress + ")"
	}
	t.Logf("%s: %d tests passed, %d failed, %d harness artefacts failed, %d skipped, in %v (log %s)",
		label, res.passed, len(failed), len(artefactFailed), res.skipped, took, logPath)
	for _, name := range failed {
		t.Errorf("%s: FAIL %s", p.pkg, name)
	}
	if runErr != nil && len(res.failed) == 0 {
		t.Errorf("%s: the test binary failed without a failed test (panic or timeout?): %v; see %s", p.pkg, runErr, logPath)
	}
}

// results is what a -test.v log says about each test.
type results struct {
	passed, skipped int
	failed          map[string]bool
}

var resultLine = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): (\S+) \(`)

func parseResults(path string) (results, error) {
	f, err := os.Open(path)
	if err != nil {
		return results{}, err
	}
	defer f.Close()
	res := results{failed: map[string]bool{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		m := resultLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		switch m[1] {
		case "PASS":
			res.passed++
		case "SKIP":
			res.skipped++
		case "FAIL":
			res.failed[m[2]] = true
		}
	}
	return res, sc.Err()
}

// leafFailures are the failed tests none of whose subtests failed: a
// parent fails with its subtests, and is named only when it failed itself.
func (r results) leafFailures() []string {
	var leaves []string
	for name := range r.failed {
		leaf := true
		for other := range r.failed {
			if strings.HasPrefix(other, name+"/") {
				leaf = false
				break
			}
		}
		if leaf {
			leaves = append(leaves, name)
		}
	}
	sort.Strings(leaves)
	return leaves
}

// server is one server process on 127.0.0.1.
type server struct {
	endpoint string
	cmd      *exec.Cmd
	exited   chan struct{}
	logPath  string
}

// startServer starts the mode's server with its data under a temporary
// directory and its log in out/server.log, and waits until it answers a
// linearizable read.
func startServer(t *testing.T, m mode, bin, progress, out string) *server {
	t.Helper()
	client := fmt.Sprintf("http://127.0.0.1:%d", testport.Port(t))
	peer := fmt.Sprintf("http://127.0.0.1:%d", testport.Port(t))
	args := []string{
		"--name", "default", "--data-dir", filepath.Join(t.TempDir(), "data"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "default=" + peer, "--log-level", "warn",
	}
	if !m.cairn {
		// As the embedded etcd of the tests (testserver.NewTestConfig).
		args = append(args, "--unsafe-no-fsync")
	}
	if progress != "" {
		args = append(args, "--watch-progress-notify-interval", progress)
	}
	args = append(args, m.args...)
	s := &server{endpoint: strings.TrimPrefix(client, "http://"), exited: make(chan struct{}), logPath: filepath.Join(out, "server.log")}
	logf, err := os.Create(s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	go func() { _ = s.cmd.Wait(); logf.Close(); close(s.exited) }()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := s.waitReady(ctx); err != nil {
		s.stop(t)
		t.Fatal(err)
	}
	return s
}

func (s *server) waitReady(ctx context.Context) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.endpoint}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	for {
		select {
		case <-s.exited:
			return fmt.Errorf("the server exited while starting; see %s", s.logPath)
		default:
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := cli.Get(rctx, "kubernetes-harness-ready-probe")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the server is not ready: %v; see %s", err, s.logPath)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop ends the server with SIGTERM (SIGKILL after 20 s) and waits for it.
func (s *server) stop(t *testing.T) {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(20 * time.Second):
		t.Errorf("the server did not stop within 20 s of SIGTERM; killed")
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
}
