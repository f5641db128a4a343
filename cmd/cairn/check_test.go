package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/cairn-kv/cairn/node"
	"github.com/cairn-kv/cairn/proto/internalpb"
)

// TestCheckCommand: `cairn check` against a sound sharded member prints
// each range's replica and succeeds; against a member reporting replicas
// that disagree it prints them and fails (exit 1) naming the ranges.
func TestCheckCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg := node.Config{Name: "m", DataDir: t.TempDir(), ListenClientURLs: []string{"http://127.0.0.1:0"},
		ListenPeerURLs: []string{"http://127.0.0.1:0"}, HeartbeatInterval: 20 * time.Millisecond,
		ElectionTimeout: 200 * time.Millisecond, Sharded: true, InitialSplitKeys: [][]byte{[]byte("m")}}
	n, err := node.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	var out bytes.Buffer
	if err := checkCommand([]string{"--endpoints", n.ClientURLs()[0]}, nil, &out); err != nil {
		t.Fatalf("check of a sound member: %v\n%s", err, out.String())
	}
	if lines := strings.Split(strings.TrimSpace(out.String()), "\n"); len(lines) != 2 || !strings.HasPrefix(lines[0], "1, ") || !strings.HasPrefix(lines[1], "2, ") {
		t.Fatalf("check of a sound member with two ranges printed:\n%s", out.String())
	}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	internalpb.RegisterNodeServer(g, mismatchServer{})
	go func() { _ = g.Serve(lis) }()
	defer g.Stop()
	out.Reset()
	err = checkCommand([]string{"--endpoints", lis.Addr().String()}, nil, &out)
	if !errors.Is(err, errMismatch) || !strings.Contains(err.Error(), "[2]") {
		t.Fatalf("check with range 2's replicas disagreeing: %v", err)
	}
	if got := out.String(); !strings.Contains(got, "2, a, 7, 2") || !strings.Contains(got, "2, b, 8, 3") {
		t.Fatalf("check with range 2's replicas disagreeing printed:\n%s", got)
	}
}

// mismatchServer answers CheckReplicas with range 2's two replicas
// disagreeing.
type mismatchServer struct {
	internalpb.UnimplementedNodeServer
}

func (mismatchServer) CheckReplicas(context.Context, *internalpb.CheckReplicasRequest) (*internalpb.CheckReplicasResponse, error) {
	return &internalpb.CheckReplicasResponse{Revision: 9, Mismatched: []uint64{2}, Replicas: []*internalpb.ReplicaCheck{
		{Range: 1, Member: 0xa, Replica: 1, Hash: 5}, {Range: 2, Member: 0xa, Replica: 7, Hash: 2}, {Range: 2, Member: 0xb, Replica: 8, Hash: 3}}}, nil
}
