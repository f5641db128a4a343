package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/cairn-kv/cairn/node"
)

// TestRangeMoveCommand: `cairn range transfer-leader` makes a member's
// replica lead a range and says so; `cairn range move` reaches the
// member's MoveRange and shows its refusals (no such range, one member
// twice); bad arguments are refused with the usage or a clear message.
func TestRangeMoveCommand(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := node.Start(ctx, node.Config{Name: "m", DataDir: t.TempDir(), ListenClientURLs: []string{"http://127.0.0.1:0"},
		ListenPeerURLs: []string{"http://127.0.0.1:0"}, HeartbeatInterval: 20 * time.Millisecond,
		ElectionTimeout: 200 * time.Millisecond, Sharded: true, InitialSplitKeys: [][]byte{[]byte("m")}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Close() })
	ep := n.ClientURLs()[0]
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ml, err := cli.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	self := fmt.Sprintf("%x", ml.Members[0].ID)
	var out bytes.Buffer
	if err := rangeCommand([]string{"transfer-leader", "--endpoints", ep, "2", self}, nil, &out); err != nil {
		t.Fatal(err)
	}
	if got, want := out.String(), "Leadership of range 2 transferred to "+self+"\n"; got != want {
		t.Fatalf("transfer-leader printed %q, want %q", got, want)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"move", "--endpoints", ep, "9", self, "1"}, "no such range: 9"},
		{[]string{"move", "--endpoints", ep, "2", self, self}, "a move needs two members"},
		{[]string{"move", "--endpoints", ep, "2", self}, "usage: cairn range split"},
		{[]string{"move", "--endpoints", ep, "x", self, "1"}, `bad range id "x"`},
		{[]string{"move", "--endpoints", ep, "2", "zz", "1"}, `bad member id "zz"`},
		{[]string{"transfer-leader", "--endpoints", ep, "2", "1"}, "holds no voting replica of range 2"},
	} {
		err := rangeCommand(tc.args, nil, &out)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error with %q", tc.args, err, tc.want)
		}
	}
}
