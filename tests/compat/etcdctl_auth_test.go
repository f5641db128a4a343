package compat

import "testing"

// asRoot and asAlice are etcdctl's --user for the auth scripts' users.
const (
	asRoot  = "--user=root:rootpw"
	asAlice = "--user=alice:a1"
)

// ctlAuthScript is what TestEtcdctlAuth runs on both servers, from fresh
// stores: etcdctl's user, role and auth commands (their answers and
// errors), then requests made with --user under the permissions granted,
// a password change, revokes and auth disable. Its keys lie on both sides
// of authSplits, so in sharded mode a user's permissions span ranges.
var ctlAuthScript = []ctlStep{
	ctl("user", "add", "root", "--new-user-password=rootpw"),
	ctl("user", "add", "alice", "--new-user-password=a1"),
	{args: []string{"user", "add", "carol", "--interactive=false"}, stdin: "c1\n"},
	ctl("user", "add", "bob", "--no-password"),
	ctl("user", "add", "alice", "--new-user-password=x"),
	ctl("user", "list"),
	ctl("user", "list", "-w", "json"),
	ctl("role", "add", "root"),
	ctl("role", "add", "writer"),
	ctl("role", "add", "reader"),
	ctl("role", "add", "reader"),
	ctl("role", "list"),
	ctl("role", "grant-permission", "writer", "readwrite", "a/", "--prefix"),
	ctl("role", "grant-permission", "writer", "write", "b/", "c/"),
	ctl("role", "grant-permission", "reader", "read", "a/x"),
	ctl("role", "grant-permission", "reader", "read", "c/", "--from-key"),
	ctl("role", "grant-permission", "reader", "bogus", "a/"),
	ctl("role", "grant-permission", "nosuch", "read", "a/"),
	ctl("role", "get", "writer"),
	ctl("role", "get", "reader", "-w", "json"),
	ctl("role", "get", "nosuch"),
	ctl("user", "grant-role", "root", "root"),
	ctl("user", "grant-role", "alice", "writer"),
	ctl("user", "grant-role", "alice", "reader"),
	ctl("user", "grant-role", "alice", "nosuch"),
	ctl("user", "grant-role", "carol", "reader"),
	ctl("user", "get", "alice"),
	ctl("user", "get", "alice", "--detail"),
	ctl("user", "get", "nosuch"),
	ctl("auth", "status"),
	// Auth on.
	ctl("auth", "enable"),
	ctl("auth", "enable", asRoot),
	ctl("auth", "status", asRoot),
	ctl("auth", "status", asRoot, "-w", "json"),
	ctl("put", "a/x", "1", asRoot),
	ctl("put", "a/y", "2", asAlice),
	ctl("put", "b/1", "3", asAlice),
	ctl("put", "c/1", "4", asAlice),
	ctl("put", "a/z", "5", "--user=alice:wrong"),
	ctl("put", "a/z", "5", "--user=nosuch:pw"),
	ctl("put", "a/z", "5"),
	ctl("get", "a/", "--prefix", asAlice),
	ctl("get", "b/1", asAlice),
	ctl("get", "c/", "--from-key", "--user=carol:c1"),
	ctl("get", "a/x", "--user=carol:c1"),
	ctl("get", "a/y", "--user=carol:c1"),
	ctl("get", "", "--prefix", asRoot),
	ctl("del", "a/y", asAlice),
	ctl("del", "a/x", "--user=carol:c1"),
	ctlTxn("value(\"a/x\") = \"1\"\n\nput a/y 6\n\nget a/x\n\n", asAlice),
	ctlTxn("\n\nput b/2 7\n\n\n", "--user=carol:c1"),
	ctl("user", "list", asAlice),
	ctl("user", "get", "alice", asAlice),
	ctl("role", "get", "writer", asAlice),
	ctl("role", "get", "root", asAlice),
	ctl("role", "get", "root", asRoot),
	ctl("compaction", "1", asAlice),
	// Changes made by root while auth is on.
	{args: []string{"user", "passwd", "alice", "--interactive=false", asRoot}, stdin: "a2\n"},
	ctl("get", "a/", "--prefix", asAlice),
	ctl("get", "a/", "--prefix", "--user=alice:a2"),
	ctl("role", "revoke-permission", "writer", "a/", "--prefix", asRoot),
	ctl("role", "revoke-permission", "writer", "a/", "--prefix", asRoot),
	ctl("put", "a/y", "8", "--user=alice:a2"),
	ctl("get", "a/x", "--user=alice:a2"),
	ctl("user", "revoke-role", "alice", "reader", asRoot),
	ctl("get", "a/x", "--user=alice:a2"),
	ctl("user", "delete", "carol", asRoot),
	ctl("get", "c/1", "--user=carol:c1"),
	ctl("role", "delete", "reader", asRoot),
	ctl("user", "delete", "root", asRoot),
	ctl("user", "revoke-role", "root", "root", asRoot),
	ctl("role", "delete", "root", asRoot),
	ctl("user", "delete", "bob", asRoot),
	ctl("user", "list", asRoot),
	ctl("role", "list", asRoot),
	// Auth off again.
	ctl("auth", "disable", asAlice),
	ctl("auth", "disable", asRoot),
	ctl("auth", "status"),
	ctl("get", "", "--prefix"),
	ctl("user", "delete", "alice"),
}

// TestEtcdctlAuth runs ctlAuthScript with etcdctl against a fresh etcd and
// a fresh Cairn, single-group and sharded (split at authSplits), and
// compares exit codes, stdout and stderr. Sharded, header revisions (in
// the JSON outputs) are masked: a header carries the revision of the range
// that answered.
func TestEtcdctlAuth(t *testing.T) {
	bin := buildEtcdctl(t)
	t.Run("single-group", func(t *testing.T) {
		runCtlScript(t, bin, ctlAuthScript, startAuthEtcd(t), startAuthCairn(t, false), nil)
	})
	t.Run("sharded", func(t *testing.T) {
		runCtlScript(t, bin, ctlAuthScript, startAuthEtcd(t), startAuthCairn(t, true), maskHeaderRevs)
	})
}
