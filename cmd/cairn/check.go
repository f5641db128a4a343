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

const checkSynopsis = "usage: cairn check [--endpoints host:port,...] [-w simple|json|table]"

const checkUsage = checkSynopsis + `

Check that the replicas of every range hold the same data: through the
first member that can be reached, take the cluster's current revision,
hash every replica of every range at it on its member and compare. Prints
each replica's hash; exits 1 naming the ranges whose replicas disagree (or
could not be hashed). Needs root once auth is enabled.`

// errMismatch is cairn check finding replicas that disagree.
var errMismatch = errors.New("replicas disagree")

// checkCommand runs `cairn check` (the node's CheckReplicas call) and
// prints every replica's hash in etcdctl's output formats (ctl.go); it
// fails, so the process exits 1, if any range's replicas disagree.
func checkCommand(args, environ []string, stdout io.Writer) error {
	cc := newCtlCommand("cairn check", checkUsage)
	// Every replica of every range is hashed: longer than etcdctl's 5s.
	cc.c.commandTimeout = 60 * time.Second
	cc.fs.Lookup("command-timeout").DefValue = "60s"
	c, err := cc.parse(args, environ, stdout)
	if errors.Is(err, errCtlHelp) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	if cc.fs.NArg() > 0 {
		return errors.New(checkSynopsis)
	}
	resp, err := eachEndpoint(c.endpoints, "check", func(ep string) (*internalpb.CheckReplicasResponse, error) {
		return callNode(ep, c, func(ctx context.Context, nc internalpb.NodeClient) (*internalpb.CheckReplicasResponse, error) {
			return nc.CheckReplicas(ctx, &internalpb.CheckReplicasRequest{})
		})
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
	default:
		rows := make([][]string, len(resp.Replicas))
		for i, r := range resp.Replicas {
			hash := fmt.Sprint(r.Hash)
			if r.Error != "" {
				hash = "error: " + r.Error
			}
			rows[i] = []string{fmt.Sprint(r.Range), fmt.Sprintf("%x", r.Member), fmt.Sprint(r.Replica), hash, fmt.Sprint(r.CompactRevision)}
		}
		if c.writeOut == "table" {
			printTable(stdout, []string{"RANGE", "MEMBER", "REPLICA", "HASH", "COMPACT REVISION"}, rows)
		} else {
			printSimple(stdout, rows)
		}
	}
	if len(resp.Mismatched) > 0 {
		ids := make([]string, len(resp.Mismatched))
		for i, id := range resp.Mismatched {
			ids[i] = strconv.FormatUint(id, 10)
		}
		return fmt.Errorf("check: %w at revision %d in range(s) %v", errMismatch, resp.Revision, ids)
	}
	return nil
}

// callNode runs call on the node-to-node service's client-port face of
// the member at endpoint, with the credentials the flags give, within
// the command timeout. An endpoint not reached within the dial timeout is
// an Unavailable error.
func callNode[T any](endpoint string, c ctlFlags, call func(context.Context, internalpb.NodeClient) (T, error)) (T, error) {
	var zero T
	conn, err := grpc.NewClient(hostOf(endpoint), grpc.WithTransportCredentials(c.grpcCreds()))
	if err != nil {
		return zero, status.Error(codes.Unavailable, err.Error())
	}
	defer conn.Close()
	dctx, cancel := context.WithTimeout(context.Background(), c.dialTimeout)
	defer cancel()
	conn.Connect()
	for s := conn.GetState(); s != connectivity.Ready; s = conn.GetState() {
		if !conn.WaitForStateChange(dctx, s) {
			return zero, status.Errorf(codes.Unavailable, "not reached within --dial-timeout %v (%v)", c.dialTimeout, s)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.commandTimeout)
	defer cancel()
	token, err := c.authenticate(ctx, endpoint)
	if err != nil {
		return zero, err
	}
	if token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, rpctypes.TokenFieldNameGRPC, token)
	}
	return call(ctx, internalpb.NewNodeClient(conn))
}
