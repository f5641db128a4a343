package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/cairn-kv/cairn/proto/internalpb"
)

// rangeSynopsis is the usage line errors repeat.
const rangeSynopsis = "usage: cairn range split [--endpoints host:port,...] [-w simple|json|table] <key>"

const rangeUsage = rangeSynopsis + `

Split the range holding key at key, in place, while it serves, through the
first member that can be reached; print the two ranges.`

// rangeCommand runs `cairn range split <key>`: it splits the range holding
// key at key, in place, through the first endpoint that can be reached
// (the node's SplitRange call), and prints the two ranges in etcdctl's
// output formats (ctl.go).
func rangeCommand(args, environ []string, stdout io.Writer) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
		fmt.Fprintln(stdout, rangeUsage)
		return nil
	}
	if len(args) == 0 || args[0] != "split" {
		return errors.New(rangeSynopsis)
	}
	cc := newCtlCommand("cairn range split", rangeUsage)
	// A split waits for the new range to start: longer than etcdctl's 5s
	// for short commands.
	cc.c.commandTimeout = 30 * time.Second
	cc.fs.Lookup("command-timeout").DefValue = "30s"
	c, err := cc.parse(args[1:], environ, stdout)
	if errors.Is(err, errCtlHelp) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("range split: %w", err)
	}
	if cc.fs.NArg() != 1 || cc.fs.Arg(0) == "" {
		return errors.New(rangeSynopsis)
	}
	key := []byte(cc.fs.Arg(0))
	var resp *internalpb.SplitRangeResponse
	var errs []error
	for _, ep := range c.endpoints {
		resp, err = splitAt(ep, key, c)
		if err == nil || status.Code(err) != codes.Unavailable {
			break
		}
		errs = append(errs, fmt.Errorf("%s: %s", ep, status.Convert(err).Message()))
	}
	if err != nil {
		if status.Code(err) == codes.Unavailable {
			return fmt.Errorf("range split: %w", errors.Join(errs...))
		}
		return fmt.Errorf("range split: %s", status.Convert(err).Message())
	}
	switch c.writeOut {
	case "json":
		b, err := protojson.Marshal(resp)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\n", b)
	case "table":
		rows := make([][]string, len(resp.Ranges))
		for i, d := range resp.Ranges {
			rows[i] = []string{fmt.Sprint(d.Id), strconv.Quote(string(d.Start)), rangeEnd(d.End), fmt.Sprint(d.Generation)}
		}
		printTable(stdout, []string{"RANGE", "START", "END", "GEN"}, rows)
	default:
		for _, d := range resp.Ranges {
			fmt.Fprintf(stdout, "range %d [%q, %s) generation %d\n", d.Id, d.Start, rangeEnd(d.End), d.Generation)
		}
	}
	return nil
}

// rangeEnd prints a range's end key, ∞ for none.
func rangeEnd(end []byte) string {
	if len(end) == 0 {
		return "∞"
	}
	return strconv.Quote(string(end))
}

// splitAt asks the member at endpoint to split at key. An endpoint not
// reached within the dial timeout is an Unavailable error.
func splitAt(endpoint string, key []byte, c ctlFlags) (*internalpb.SplitRangeResponse, error) {
	conn, err := grpc.NewClient(hostOf(endpoint), grpc.WithTransportCredentials(c.grpcCreds()))
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	defer conn.Close()
	dctx, cancel := context.WithTimeout(context.Background(), c.dialTimeout)
	defer cancel()
	conn.Connect()
	for s := conn.GetState(); s != connectivity.Ready; s = conn.GetState() {
		if !conn.WaitForStateChange(dctx, s) {
			return nil, status.Errorf(codes.Unavailable, "not reached within --dial-timeout %v (%v)", c.dialTimeout, s)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.commandTimeout)
	defer cancel()
	token, err := c.authenticate(ctx, endpoint)
	if err != nil {
		return nil, err
	}
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, rpctypes.TokenFieldNameGRPC, token)
	}
	return internalpb.NewNodeClient(conn).SplitRange(ctx, &internalpb.SplitRangeRequest{Key: key})
}
