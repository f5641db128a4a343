// Command cairn runs a Cairn node. With no flags it starts a one-node cluster
// on 127.0.0.1:2379 with its data in ./default.cairn, as etcd does. It takes
// etcd's server flags and ETCD_* environment variables (see flags.go).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"go.etcd.io/etcd/api/v3/version"

	"github.com/cairn-kv/cairn/node"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cairn:", err)
		os.Exit(1)
	}
}

// run parses the command line and the environment into node.Config and
// serves until ctx is done. Logs go where --log-outputs says (stderr by
// default), as etcd's lines.
func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "snapshot" {
		return snapshotCommand(args[1:], stdout)
	}
	if len(args) > 0 && args[0] == "ranges" {
		return rangesCommand(args[1:], environ, stdout)
	}
	if len(args) > 0 && args[0] == "range" {
		return rangeCommand(args[1:], environ, stdout)
	}
	if len(args) > 0 && args[0] == "check" {
		return checkCommand(args[1:], environ, stdout)
	}
	o, err := parseFlags(args, environ)
	if errors.Is(err, flag.ErrHelp) {
		usage(stdout)
		return nil
	}
	if err != nil {
		return err
	}
	if o.version {
		printVersion(stdout)
		return nil
	}
	cfg := o.cfg
	lc := o.log
	lc.Stderr, lc.Stdout = stderr, stdout
	log, closeLog, err := node.NewLogger(lc)
	if err != nil {
		return err
	}
	defer func() { _ = closeLog() }()
	// Before node.Run: dragonboat's loggers are made on first use, and
	// they are the process's.
	node.RouteDragonboatLogs(log)
	// Before node.Run too: the raft log's files are opened with the
	// NodeHost.
	if !o.untimedRaftLog {
		node.TimeRaftLogSyncs()
	}
	cfg.Logger = log
	o.report(cfg.Logger)
	err = node.Run(ctx, cfg)
	if err != nil {
		// Also in the log, which may be a file: main prints it on stderr.
		log.Error("cairn stopped", "error", err)
	}
	return err
}

// printVersion prints etcd's version lines, as `etcd --version` does —
// the etcd API version Cairn serves, the commit it was built from, Go's
// version and platform; tools parse the first line — and then Cairn's
// own version.
func printVersion(w io.Writer) {
	cairn, sha := "(devel)", "Not provided (built without version control information)"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			cairn = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && s.Value != "" {
				sha = s.Value[:min(len(s.Value), 7)] // git's short form, as etcd's
			}
		}
	}
	fmt.Fprintf(w, "etcd Version: %s\nGit SHA: %s\nGo Version: %s\nGo OS/Arch: %s/%s\nCairn Version: %s\n",
		version.Version, sha, runtime.Version(), runtime.GOOS, runtime.GOARCH, cairn)
}

// snapshotCommand runs `cairn snapshot restore <file> --data-dir <dir>`:
// it makes a data directory from a backup taken with `etcdctl snapshot
// save` against Cairn; `cairn` then starts on it as the first member of a
// new cluster (or each member, each restored from the same file).
func snapshotCommand(args []string, stdout io.Writer) error {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
		args = []string{"restore", "-h"}
	}
	if len(args) == 0 || args[0] != "restore" {
		return fmt.Errorf("usage: cairn snapshot restore <file> --data-dir <dir>")
	}
	fs := flag.NewFlagSet("cairn snapshot restore", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dataDir := fs.String("data-dir", "", "the data directory to create (default \"${name}.cairn\")")
	name := fs.String("name", "default", "the member name, for the default data directory")
	var file string
	rest := args[1:]
	if len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		file, rest = rest[0], rest[1:]
	}
	if err := fs.Parse(rest); errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(stdout, "usage: cairn snapshot restore <file> --data-dir <dir> [--name name]\n\n"+
			"Make a data directory from a backup taken with etcdctl snapshot save.\n\nFlags:")
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return nil
	} else if err != nil {
		return fmt.Errorf("snapshot restore: %w", err)
	}
	if file == "" && fs.NArg() == 1 {
		file = fs.Arg(0)
	} else if fs.NArg() > 0 || file == "" {
		return fmt.Errorf("usage: cairn snapshot restore <file> --data-dir <dir>")
	}
	if *dataDir == "" {
		*dataDir = *name + ".cairn"
	}
	rev, err := node.RestoreSnapshot(file, *dataDir)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "restored %s into %s at revision %d\n", file, *dataDir, rev)
	return nil
}
