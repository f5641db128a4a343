package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// subRun is what the side subcommands (watch-scale, leases) share: a
// progress printer, a work directory holding a freshly built cairn, and the
// systems asked for.
type subRun struct {
	start    time.Time
	progress func(format string, a ...any)
	work     string
	env      *environment
	systems  []system
}

// startSubRun checks the system names, builds cmd/cairn of the repository
// at rootDir into a temporary work directory and returns the run; close
// removes the directory.
func startSubRun(ctx context.Context, cmd, rootDir string, names []string) (r *subRun, close func(), err error) {
	r = &subRun{start: time.Now()}
	r.progress = func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "[%6.1fs] %s\n", time.Since(r.start).Seconds(), fmt.Sprintf(format, a...))
	}
	for _, name := range names {
		i := slices.IndexFunc(systems(), func(s system) bool { return s.name == name })
		if i < 0 || name == "ceiling" {
			return nil, nil, fmt.Errorf("bench: %s: unknown system %q (etcd, cairn, etcd-3, cairn-3, cairn-sharded, cairn-sharded-3)", cmd, name)
		}
		r.systems = append(r.systems, systems()[i])
	}
	root, err := findRoot(rootDir)
	if err != nil {
		return nil, nil, err
	}
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	if r.work, err = os.MkdirTemp("", "cairn-"+cmd+"-"); err != nil {
		return nil, nil, err
	}
	close = func() { os.RemoveAll(r.work) }
	r.env = &environment{self: self, cairn: filepath.Join(r.work, "bin", "cairn")}
	r.progress("building cairn (cmd/cairn)")
	if err := goBuild(ctx, root, r.env.cairn, "./cmd/cairn"); err != nil {
		close()
		return nil, nil, err
	}
	return r, close, nil
}

// saveReport ends a subcommand: it writes report to dir/name, prints it,
// says where it is, and fails if some runs failed (what names the
// subcommand in the error).
func saveReport(dir, name, report string, progress func(format string, a ...any), failed bool, what string) error {
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(report), 0o644); err != nil {
		return err
	}
	fmt.Println(report)
	progress("report: %s", path)
	if failed {
		return fmt.Errorf("bench: %s: some runs failed; see the report", what)
	}
	return nil
}
