package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
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

// rangeSynopsis is the usage lines errors repeat.
const rangeSynopsis = `usage: cairn range split [--endpoints host:port,...] [-w simple|json|table] <key>
       cairn range move [--endpoints host:port,...] <range> <from-member> <to-member>
       cairn range transfer-leader [--endpoints host:port,...] <range> <member>
       cairn range merge [--endpoints host:port,...] <left-range>`

const rangeUsage = rangeSynopsis + `

split: split the range holding key at key, in place, while it serves,
through the first member that can be reached; print the two ranges.

move: move range's replica on from-member to to-member while it serves (the
new replica is added non-voting, caught up by a snapshot, made a voter;
leadership leaves the old one, which is then removed); print the range.

transfer-leader: make member's replica of range the range's leader.

merge: merge the range that starts where left-range ends into left-range,
in place, while both serve (their replicas must be voters on the same
members); print the merged range.

Members are named by their ids in hex, as etcdctl member list prints them.
Moves, leader transfers and merges need root once auth is enabled.`

// rangeCommand runs `cairn range split <key>`: it splits the range holding
// key at key, in place, through the first endpoint that can be reached
// (the node's SplitRange call), and prints the two ranges in etcdctl's
// output formats (ctl.go).
func rangeCommand(args, environ []string, stdout io.Writer) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "-help") {
		fmt.Fprintln(stdout, rangeUsage)
		return nil
	}
	if len(args) > 0 && (args[0] == "move" || args[0] == "transfer-leader" || args[0] == "merge") {
		return rangeMoveCommand(args[0], args[1:], environ, stdout)
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
	resp, err := eachEndpoint(c.endpoints, "range split", func(ep string) (*internalpb.SplitRangeResponse, error) {
		return splitAt(ep, key, c)
	})
	if err != nil {
		return err
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
	var resp *internalpb.SplitRangeResponse
	err := nodeCall(endpoint, c, func(ctx context.Context, nc internalpb.NodeClient) (err error) {
		resp, err = nc.SplitRange(ctx, &internalpb.SplitRangeRequest{Key: key})
		return err
	})
	return resp, err
}

// nodeCall makes call to the node-to-node service's operator face at
// endpoint, within the command timeout and as the user of c. An endpoint
// not reached within the dial timeout is an Unavailable error.
func nodeCall(endpoint string, c ctlFlags, call func(ctx context.Context, nc internalpb.NodeClient) error) error {
	conn, err := grpc.NewClient(hostOf(endpoint), grpc.WithTransportCredentials(c.grpcCreds()))
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	defer conn.Close()
	dctx, cancel := context.WithTimeout(context.Background(), c.dialTimeout)
	defer cancel()
	conn.Connect()
	for s := conn.GetState(); s != connectivity.Ready; s = conn.GetState() {
		if !conn.WaitForStateChange(dctx, s) {
			return status.Errorf(codes.Unavailable, "not reached within --dial-timeout %v (%v)", c.dialTimeout, s)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.commandTimeout)
	defer cancel()
	token, err := c.authenticate(ctx, endpoint)
	if err != nil {
		return err
	}
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, rpctypes.TokenFieldNameGRPC, token)
	}
	return call(ctx, internalpb.NewNodeClient(conn))
}

// rangeMoveCommand runs `cairn range move <range> <from> <to>` and `cairn
// range transfer-leader <range> <member>` (what, with their args) through
// the first endpoint that can be reached.
func rangeMoveCommand(what string, args, environ []string, stdout io.Writer) error {
	cc := newCtlCommand("cairn range "+what, rangeUsage)
	// A move waits for the new replica to catch up: far longer than
	// etcdctl's 5s for short commands.
	cc.c.commandTimeout = time.Minute
	cc.fs.Lookup("command-timeout").DefValue = "1m0s"
	c, err := cc.parse(args, environ, stdout)
	if errors.Is(err, errCtlHelp) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("range %s: %w", what, err)
	}
	want := 3
	switch what {
	case "transfer-leader":
		want = 2
	case "merge":
		want = 1
	}
	if cc.fs.NArg() != want {
		return errors.New(rangeSynopsis)
	}
	rangeID, err := strconv.ParseUint(cc.fs.Arg(0), 10, 64)
	if err != nil || rangeID == 0 {
		return fmt.Errorf("range %s: bad range id %q", what, cc.fs.Arg(0))
	}
	members := make([]uint64, want-1)
	for i := range members {
		if members[i], err = strconv.ParseUint(cc.fs.Arg(i+1), 16, 64); err != nil || members[i] == 0 {
			return fmt.Errorf("range %s: bad member id %q (hex, as etcdctl member list prints it)", what, cc.fs.Arg(i+1))
		}
	}
	var moved *internalpb.MoveRangeResponse
	call := func(ctx context.Context, nc internalpb.NodeClient) (err error) {
		if what == "merge" {
			var merged *internalpb.MergeRangeResponse
			merged, err = nc.MergeRange(ctx, &internalpb.MergeRangeRequest{Left: rangeID})
			if err == nil {
				moved = &internalpb.MoveRangeResponse{Range: merged.Range}
			}
			return err
		}
		if what == "move" {
			moved, err = nc.MoveRange(ctx, &internalpb.MoveRangeRequest{Range: rangeID, FromMember: members[0], ToMember: members[1]})
			return err
		}
		_, err = nc.TransferRangeLeader(ctx, &internalpb.TransferRangeLeaderRequest{Range: rangeID, Member: members[0]})
		return err
	}
	if _, err := eachEndpoint(c.endpoints, "range "+what, func(ep string) (struct{}, error) {
		return struct{}{}, nodeCall(ep, c, call)
	}); err != nil {
		return err
	}
	if what == "transfer-leader" {
		fmt.Fprintf(stdout, "Leadership of range %d transferred to %x\n", rangeID, members[0])
		return nil
	}
	if c.writeOut == "json" {
		b, err := protojson.Marshal(moved)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\n", b)
		return nil
	}
	if what == "merge" {
		fmt.Fprintf(stdout, "Merged the range right of range %d into it\n", rangeID)
	} else {
		fmt.Fprintf(stdout, "Moved range %d from %x to %x\n", rangeID, members[0], members[1])
	}
	if d := moved.GetRange(); d != nil {
		var replicas []string
		for _, p := range d.ReplicaSet {
			replicas = append(replicas, fmt.Sprintf("%x", p.Member))
		}
		fmt.Fprintf(stdout, "range %d [%q, %s) generation %d on %s\n", d.Id, d.Start, rangeEnd(d.End), d.Generation, strings.Join(replicas, ", "))
	}
	return nil
}

// eachEndpoint calls call on the endpoints in turn until one answers with
// anything but Unavailable, and returns that answer; the error says what
// failed (what: the command) and, when no endpoint could be reached, why
// for each.
func eachEndpoint[T any](endpoints []string, what string, call func(ep string) (T, error)) (T, error) {
	var (
		resp T
		err  error
		errs []error
	)
	for _, ep := range endpoints {
		resp, err = call(ep)
		if err == nil || status.Code(err) != codes.Unavailable {
			break
		}
		errs = append(errs, fmt.Errorf("%s: %s", ep, status.Convert(err).Message()))
	}
	if err != nil {
		if status.Code(err) == codes.Unavailable && len(errs) > 0 {
			return resp, fmt.Errorf("%s: %w", what, errors.Join(errs...))
		}
		return resp, fmt.Errorf("%s: %s", what, status.Convert(err).Message())
	}
	return resp, nil
}
