package compat

import (
	"context"
	"testing"

	"github.com/cairn-kv/cairn/node"
)

// startCairn starts an in-process Cairn node on free ports in a temporary
// directory. node.Start returns once the node serves clients and has a raft
// leader; it is closed at the end of the test.
func startCairn(t testing.TB, name string) *server {
	t.Helper()
	return startCairnWith(t, name, nil)
}

// startCairnWith is startCairn with the config changed by edit (nil: none).
func startCairnWith(t testing.TB, name string, edit func(*node.Config)) *server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cfg := node.Config{
		Name:             name,
		DataDir:          t.TempDir(),
		ListenClientURLs: []string{"http://127.0.0.1:0"},
		ListenPeerURLs:   []string{"http://127.0.0.1:0"},
	}
	if edit != nil {
		edit(&cfg)
	}
	n, err := node.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("start cairn %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close cairn %s: %v", name, err)
		}
	})
	ep := n.ClientURLs()[0]
	cli, wire := newClient(t, ep)
	return &server{name: name, endpoint: ep, cli: cli, wire: wire}
}
