package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/url"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/cairn-kv/cairn/proto/internalpb"
)

// rangeCommand runs `cairn range split <key> [--endpoint URL]`: it splits
// the range holding key at key, in place, through the member at the
// endpoint (the node's SplitRange call), and prints the two ranges.
func rangeCommand(args []string, stdout io.Writer) error {
	const usage = "usage: cairn range split [--endpoint http://host:port] <key>"
	if len(args) == 0 || args[0] != "split" {
		return fmt.Errorf("%s", usage)
	}
	fs := flag.NewFlagSet("cairn range split", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	endpoint := fs.String("endpoint", "http://127.0.0.1:2379", "client URL of a member")
	if err := fs.Parse(args[1:]); err != nil || fs.NArg() != 1 || fs.Arg(0) == "" {
		return fmt.Errorf("%s", usage)
	}
	u, err := url.Parse(*endpoint)
	if err != nil || u.Host == "" {
		return fmt.Errorf("range split: bad endpoint %q", *endpoint)
	}
	conn, err := grpc.NewClient(u.Host, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("range split: %w", err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := internalpb.NewNodeClient(conn).SplitRange(ctx, &internalpb.SplitRangeRequest{Key: []byte(fs.Arg(0))})
	if err != nil {
		return fmt.Errorf("range split: %s", status.Convert(err).Message())
	}
	for _, d := range resp.Ranges {
		end := "∞"
		if len(d.End) > 0 {
			end = fmt.Sprintf("%q", d.End)
		}
		fmt.Fprintf(stdout, "range %d [%q, %s) generation %d\n", d.Id, d.Start, end, d.Generation)
	}
	return nil
}
