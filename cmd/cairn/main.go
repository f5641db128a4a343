// Command cairn runs a Cairn node. With no flags it starts a one-node cluster
// on 127.0.0.1:2379 with its data in ./default.cairn, as etcd does; flags
// carry etcd's names where they mean the same thing.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cairn-kv/cairn/node"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "cairn:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("cairn", flag.ContinueOnError)
	var (
		cfg                                 node.Config
		clientURLs, advertiseURLs, peerURLs string
		heartbeatMS, electionMS             int
		logLevel                            string
	)
	fs.StringVar(&cfg.Name, "name", "default", "human-readable name for this member")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "path to the data directory (default \"${name}.cairn\")")
	fs.StringVar(&clientURLs, "listen-client-urls", "http://127.0.0.1:2379", "comma-separated URLs to serve clients on (gRPC and HTTP)")
	fs.StringVar(&advertiseURLs, "advertise-client-urls", "", "comma-separated client URLs to advertise (default: the listen URLs)")
	fs.StringVar(&peerURLs, "listen-peer-urls", "http://127.0.0.1:2380", "comma-separated URLs for raft traffic")
	fs.IntVar(&heartbeatMS, "heartbeat-interval", 100, "time (in milliseconds) of a heartbeat interval")
	fs.IntVar(&electionMS, "election-timeout", 1000, "time (in milliseconds) for an election to timeout")
	fs.Uint64Var(&cfg.SnapshotCount, "snapshot-count", 10000, "number of committed transactions between raft log compactions")
	fs.IntVar(&cfg.MaxRequestBytes, "max-request-bytes", 1536*1024, "maximum client request size in bytes")
	fs.IntVar(&cfg.MaxTxnOps, "max-txn-ops", 128, "maximum number of operations permitted in a transaction")
	fs.DurationVar(&cfg.WatchProgressNotifyInterval, "watch-progress-notify-interval", 10*time.Minute, "duration of periodic watch progress notifications")
	fs.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return fmt.Errorf("--log-level: %v", err)
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	cfg.ListenClientURLs = split(clientURLs)
	cfg.AdvertiseClientURLs = split(advertiseURLs)
	cfg.ListenPeerURLs = split(peerURLs)
	cfg.HeartbeatInterval = time.Duration(heartbeatMS) * time.Millisecond
	cfg.ElectionTimeout = time.Duration(electionMS) * time.Millisecond

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return node.Run(ctx, cfg)
}

func split(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
