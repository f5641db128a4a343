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
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"

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
// serves until ctx is done. Logs go to stderr.
func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
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
	cfg.Logger = slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: o.logLevel}))
	o.report(cfg.Logger)
	return node.Run(ctx, cfg)
}

func printVersion(w io.Writer) {
	version := "(devel)"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		version = bi.Main.Version
	}
	fmt.Fprintf(w, "cairn Version: %s\nGo Version: %s\nGo OS/Arch: %s/%s\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
