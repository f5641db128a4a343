package compat

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/node"
)

var (
	flagAuthSeqs = flag.Int64("auth.seqs", seqs[int64](10, 30), "TestAuthDifferential: number of sequences (10, or 30 with -tags cairn_long)")
	flagAuthSeed = flag.Int64("auth.seed", 0, "TestAuthDifferential: run sequences 1..seed and log every step of sequence seed (with -v)")
)

// authSplits cut a sharded Cairn's key space between the prefixes the
// auth sequences use, so each prefix is its own range.
var authSplits = []string{"b/", "c/"}

// TestAuthDifferential runs seeded sequences of auth changes (users, roles,
// permission grants and revokes, passwords, enable and disable) made by
// root, interleaved with KV, lease and watch requests made by several
// users — root, alice and bob each with their current and a stale
// password, carol, and a client without a user — against etcd and Cairn in
// lockstep, and compares every answer, errors by code and message. The
// state carries over from one sequence to the next. Single-group answers
// are compared with their header revisions; a sharded Cairn's revisions
// are not etcd's (see TestShardedDifferential), so there revisions are left
// out and only keys, values and errors compared.
func TestAuthDifferential(t *testing.T) {
	t.Run("single-group", func(t *testing.T) {
		runAuthDifferential(t, startAuthEtcd(t), startAuthCairn(t, false), false)
	})
	t.Run("sharded", func(t *testing.T) {
		runAuthDifferential(t, startAuthEtcd(t), startAuthCairn(t, true), true)
	})
}

// authBcryptCost keeps password hashing cheap on both servers: the test
// authenticates often.
const authBcryptCost = 4

func startAuthEtcd(t *testing.T) *server {
	return startEtcdWith(t, "etcd", func(c *embed.Config) { c.BcryptCost = authBcryptCost })
}

func startAuthCairn(t *testing.T, sharded bool) *server {
	return startCairnWith(t, "cairn", func(c *node.Config) {
		c.BcryptCost = authBcryptCost
		if sharded {
			c.Sharded = true
			for _, k := range authSplits {
				c.InitialSplitKeys = append(c.InitialSplitKeys, []byte(k))
			}
		}
	})
}

// authClients are the test's clients, by name: the user each logs in as
// and with which password ("" for no user). A client whose password is not
// the user's current one fails to authenticate, as etcd's would.
var authClients = []struct{ name, user, password string }{
	{"root", "root", "rootpw"},
	{"alice", "alice", "a1"},
	{"alice-old", "alice", "a2"},
	{"bob", "bob", "b1"},
	{"bob-old", "bob", "b2"},
	{"carol", "carol", "c1"},
	{"anon", "", ""},
}

// authSide is one server under test and its clients.
type authSide struct {
	s       *server
	sharded bool
	clients map[string]*clientv3.Client
	wires   map[string]*wireRecorder
	leases  []int64 // granted, in grant order: compared by index
}

func newAuthSide(t *testing.T, s *server, sharded bool) *authSide {
	sd := &authSide{s: s, sharded: sharded, clients: map[string]*clientv3.Client{}, wires: map[string]*wireRecorder{}}
	for _, c := range authClients {
		wire := &wireRecorder{}
		cli, err := clientv3.New(clientv3.Config{
			Endpoints:   []string{s.endpoint},
			DialTimeout: 10 * time.Second,
			Username:    c.user,
			Password:    c.password,
			Logger:      zap.NewNop(),
			DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(wire.intercept)},
		})
		if err != nil {
			t.Fatalf("%s: client %s: %v", s.name, c.name, err)
		}
		t.Cleanup(func() { _ = cli.Close() })
		sd.clients[c.name], sd.wires[c.name] = cli, wire
	}
	return sd
}

// answer renders a response or an error as compared: errors as the wire
// carried them (code and message), responses with what names the server
// zeroed, lease ids by grant order and, sharded, revisions left out.
func (sd *authSide) answer(client string, resp proto.Message, err error) string {
	if wireErr := sd.wires[client].take(); err != nil {
		if wireErr != nil {
			err = wireErr
		}
		return "error " + errText(err)
	}
	if resp == nil {
		return "ok"
	}
	resp = proto.Clone(resp)
	normalize(resp.ProtoReflect())
	if sd.sharded {
		dropHeaderRevs(resp.ProtoReflect())
		dropKVRevs(resp)
	}
	sd.nameLeases(resp)
	return strings.TrimSpace(prototext.MarshalOptions{}.Format(resp))
}

// dropKVRevs zeroes the revisions of the key-values in a KV response.
func dropKVRevs(m proto.Message) {
	switch r := m.(type) {
	case *pb.RangeResponse:
		for _, kv := range r.Kvs {
			kv.CreateRevision, kv.ModRevision = 0, 0
		}
	case *pb.PutResponse:
		if r.PrevKv != nil {
			r.PrevKv.CreateRevision, r.PrevKv.ModRevision = 0, 0
		}
	case *pb.DeleteRangeResponse:
		for _, kv := range r.PrevKvs {
			kv.CreateRevision, kv.ModRevision = 0, 0
		}
	case *pb.TxnResponse:
		for _, op := range r.Responses {
			switch x := op.Response.(type) {
			case *pb.ResponseOp_ResponseRange:
				dropKVRevs(x.ResponseRange)
			case *pb.ResponseOp_ResponsePut:
				dropKVRevs(x.ResponsePut)
			case *pb.ResponseOp_ResponseDeleteRange:
				dropKVRevs(x.ResponseDeleteRange)
			case *pb.ResponseOp_ResponseTxn:
				dropKVRevs(x.ResponseTxn)
			}
		}
	case *pb.WatchResponse:
		for _, ev := range r.Events {
			ev.Kv.CreateRevision, ev.Kv.ModRevision = 0, 0
			if ev.PrevKv != nil {
				ev.PrevKv.CreateRevision, ev.PrevKv.ModRevision = 0, 0
			}
		}
	}
}

// leaseName is lease id as its grant order (L0, L1…), or as it is when not
// granted here.
func (sd *authSide) leaseName(id int64) int64 {
	for i, l := range sd.leases {
		if l == id {
			return int64(i + 1)
		}
	}
	return id
}

// nameLeases replaces lease ids in a response by their grant order.
func (sd *authSide) nameLeases(m proto.Message) {
	switch r := m.(type) {
	case *pb.LeaseGrantResponse:
		r.ID = sd.leaseName(r.ID)
	case *pb.LeaseRevokeResponse:
	case *pb.LeaseTimeToLiveResponse:
		r.ID = sd.leaseName(r.ID)
		if r.TTL > 0 {
			r.TTL = 1 // counts down: compared as alive
		}
	case *pb.RangeResponse:
		for _, kv := range r.Kvs {
			kv.Lease = sd.leaseName(kv.Lease)
		}
	case *pb.PutResponse:
		if r.PrevKv != nil {
			r.PrevKv.Lease = sd.leaseName(r.PrevKv.Lease)
		}
	case *pb.DeleteRangeResponse:
		for _, kv := range r.PrevKvs {
			kv.Lease = sd.leaseName(kv.Lease)
		}
	case *pb.TxnResponse:
		for _, op := range r.Responses {
			switch x := op.Response.(type) {
			case *pb.ResponseOp_ResponseRange:
				sd.nameLeases(x.ResponseRange)
			case *pb.ResponseOp_ResponsePut:
				sd.nameLeases(x.ResponsePut)
			case *pb.ResponseOp_ResponseDeleteRange:
				sd.nameLeases(x.ResponseDeleteRange)
			case *pb.ResponseOp_ResponseTxn:
				sd.nameLeases(x.ResponseTxn)
			}
		}
	}
}

// lease is the id of the i-th lease granted here, or one never granted.
func (sd *authSide) lease(i int) int64 {
	if i < len(sd.leases) {
		return sd.leases[i]
	}
	return 0x7eadbeef
}

type authStep struct {
	desc string
	run  func(ctx context.Context, sd *authSide) string
}

func runAuthDifferential(t *testing.T, etcd, cairn *server, sharded bool) {
	sides := []*authSide{newAuthSide(t, etcd, sharded), newAuthSide(t, cairn, sharded)}
	errs := map[string]int{} // etcd's refusals, by message
	compare := func(seed int64, i int, st authStep, trace []string, verbose bool) {
		t.Helper()
		var answers [2]string
		for k, sd := range sides {
			ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
			answers[k] = st.run(ctx, sd)
			cancel()
		}
		if _, e, ok := strings.Cut(answers[0], "error "); ok {
			errs[e]++
		} else if _, e, ok := strings.Cut(answers[0], "reason=\"rpc error: "); ok {
			errs["watch refused: "+e]++
		}
		if verbose {
			t.Logf("seed %d step %d: %s\n  etcd:  %s\n  cairn: %s", seed, i, st.desc, answers[0], answers[1])
		}
		if answers[0] != answers[1] {
			t.Fatalf("seed %d step %d: answers differ (replay: -run 'TestAuthDifferential/%s' -auth.seed=%d -v)\nstep: %s\netcd:  %s\ncairn: %s\nsequence so far:\n  %s",
				seed, i, map[bool]string{false: "single-group", true: "sharded"}[sharded], max(seed, 1), st.desc,
				answers[0], answers[1], strings.Join(trace, "\n  "))
		}
	}
	for i, st := range authPrologue() {
		compare(0, i, st, nil, *flagAuthSeed > 0)
	}
	last := *flagAuthSeqs
	if *flagAuthSeed > 0 {
		last = *flagAuthSeed
	}
	kinds := map[string]int{}
	for seed := int64(1); seed <= last; seed++ {
		r := rand.New(rand.NewPCG(uint64(seed), 23))
		var trace []string
		for i := range 40 {
			st := authOp(r)
			trace = append(trace, st.desc)
			kinds[strings.Fields(st.desc)[1]]++
			compare(seed, i, st, trace, seed == *flagAuthSeed)
		}
	}
	t.Logf("%d sequences; steps by kind: %v\netcd's refusals: %v", last, kinds, errs)
}

// authPrologue makes root, the roles ra (alice's: a/ read-write) and rb
// (bob's: read b/ to b/m, write b/x), the users, and enables auth.
func authPrologue() []authStep {
	return []authStep{
		authChange("UserAdd root", func(a clientv3.Auth, ctx context.Context) (proto.Message, error) {
			return pbResp(a.UserAdd(ctx, "root", "rootpw"))
		}),
		authChange("UserGrantRole root root", func(a clientv3.Auth, ctx context.Context) (proto.Message, error) {
			return pbResp(a.UserGrantRole(ctx, "root", "root"))
		}),
		authChange("RoleAdd ra", func(a clientv3.Auth, ctx context.Context) (proto.Message, error) { return pbResp(a.RoleAdd(ctx, "ra")) }),
		authChange("RoleAdd rb", func(a clientv3.Auth, ctx context.Context) (proto.Message, error) { return pbResp(a.RoleAdd(ctx, "rb")) }),
		grantStep("ra", authPerms[0], clientv3.PermReadWrite),
		grantStep("rb", authPerms[1], clientv3.PermRead),
		grantStep("rb", authPerms[2], clientv3.PermWrite),
		authChange("UserAdd alice", func(a clientv3.Auth, ctx context.Context) (proto.Message, error) {
			return pbResp(a.UserAdd(ctx, "alice", "a1"))
		}),
		authChange("UserAdd bob", func(a clientv3.Auth, ctx context.Context) (proto.Message, error) {
			return pbResp(a.UserAdd(ctx, "bob", "b1"))
		}),
		authChange("UserGrantRole alice ra", func(a clientv3.Auth, ctx context.Context) (proto.Message, error) {
			return pbResp(a.UserGrantRole(ctx, "alice", "ra"))
		}),
		authChange("UserGrantRole bob rb", func(a clientv3.Auth, ctx context.Context) (proto.Message, error) {
			return pbResp(a.UserGrantRole(ctx, "bob", "rb"))
		}),
		authChange("AuthEnable", func(a clientv3.Auth, ctx context.Context) (proto.Message, error) { return pbResp(a.AuthEnable(ctx)) }),
	}
}

// pbResp turns a clientv3 response (a named etcd response type) into its
// protobuf message.
func pbResp[R any](resp *R, err error) (proto.Message, error) {
	if err != nil || resp == nil {
		return nil, err
	}
	if m, ok := any(resp).(proto.Message); ok {
		return m, nil
	}
	switch r := any(resp).(type) {
	case *clientv3.AuthEnableResponse:
		return (*pb.AuthEnableResponse)(r), nil
	case *clientv3.AuthDisableResponse:
		return (*pb.AuthDisableResponse)(r), nil
	case *clientv3.AuthStatusResponse:
		return (*pb.AuthStatusResponse)(r), nil
	case *clientv3.AuthUserAddResponse:
		return (*pb.AuthUserAddResponse)(r), nil
	case *clientv3.AuthUserDeleteResponse:
		return (*pb.AuthUserDeleteResponse)(r), nil
	case *clientv3.AuthUserChangePasswordResponse:
		return (*pb.AuthUserChangePasswordResponse)(r), nil
	case *clientv3.AuthUserGrantRoleResponse:
		return (*pb.AuthUserGrantRoleResponse)(r), nil
	case *clientv3.AuthUserRevokeRoleResponse:
		return (*pb.AuthUserRevokeRoleResponse)(r), nil
	case *clientv3.AuthUserGetResponse:
		return (*pb.AuthUserGetResponse)(r), nil
	case *clientv3.AuthUserListResponse:
		return (*pb.AuthUserListResponse)(r), nil
	case *clientv3.AuthRoleAddResponse:
		return (*pb.AuthRoleAddResponse)(r), nil
	case *clientv3.AuthRoleDeleteResponse:
		return (*pb.AuthRoleDeleteResponse)(r), nil
	case *clientv3.AuthRoleGetResponse:
		return (*pb.AuthRoleGetResponse)(r), nil
	case *clientv3.AuthRoleListResponse:
		return (*pb.AuthRoleListResponse)(r), nil
	case *clientv3.AuthRoleGrantPermissionResponse:
		return (*pb.AuthRoleGrantPermissionResponse)(r), nil
	case *clientv3.AuthRoleRevokePermissionResponse:
		return (*pb.AuthRoleRevokePermissionResponse)(r), nil
	case *clientv3.GetResponse:
		return (*pb.RangeResponse)(r), nil
	case *clientv3.PutResponse:
		return (*pb.PutResponse)(r), nil
	case *clientv3.DeleteResponse:
		return (*pb.DeleteRangeResponse)(r), nil
	case *clientv3.TxnResponse:
		return (*pb.TxnResponse)(r), nil
	case *clientv3.LeaseGrantResponse:
		return &pb.LeaseGrantResponse{Header: r.ResponseHeader, ID: int64(r.ID), TTL: r.TTL, Error: r.Error}, nil
	case *clientv3.LeaseRevokeResponse:
		return (*pb.LeaseRevokeResponse)(r), nil
	case *clientv3.LeaseTimeToLiveResponse:
		return &pb.LeaseTimeToLiveResponse{Header: r.ResponseHeader, ID: int64(r.ID), TTL: r.TTL, GrantedTTL: r.GrantedTTL, Keys: r.Keys}, nil
	}
	panic(fmt.Sprintf("compat: no protobuf for %T", resp))
}

// authChange is a step root makes through the Auth API.
func authChange(desc string, call func(clientv3.Auth, context.Context) (proto.Message, error)) authStep {
	return asClient("root", desc, func(ctx context.Context, cli *clientv3.Client, _ *authSide) (proto.Message, error) {
		return call(cli, ctx)
	})
}

// asClient is a step client makes.
func asClient(client, desc string, call func(context.Context, *clientv3.Client, *authSide) (proto.Message, error)) authStep {
	return authStep{desc: client + " " + desc, run: func(ctx context.Context, sd *authSide) string {
		resp, err := call(ctx, sd.clients[client], sd)
		return sd.answer(client, resp, err)
	}}
}

// authPerms are the key sets permissions name: a/'s prefix, [b/, b/m),
// the key b/x, every key from c/, the key a/1.
var authPerms = []struct{ key, end string }{
	{"a/", "a0"}, {"b/", "b/m"}, {"b/x", ""}, {"c/", "\x00"}, {"a/1", ""},
}

var permTypes = []authpb.Permission_Type{clientv3.PermRead, clientv3.PermWrite, clientv3.PermReadWrite}

func grantStep(role string, p struct{ key, end string }, typ authpb.Permission_Type) authStep {
	return authChange(fmt.Sprintf("RoleGrantPermission %s %q %q %v", role, p.key, p.end, typ),
		func(a clientv3.Auth, ctx context.Context) (proto.Message, error) {
			return pbResp(a.RoleGrantPermission(ctx, role, p.key, p.end, clientv3.PermissionType(typ)))
		})
}

// authKeys are the keys the KV steps touch, by prefix: a prefix's keys lie
// in one range of a sharded Cairn.
var authKeys = [][]string{{"a/1", "a/2"}, {"b/a", "b/x", "b/z"}, {"c/1", "c/2"}}

// authReads are the key sets reads and watches name, some over several
// prefixes (ranges).
var authReads = []struct{ key, end string }{
	{"a/1", ""}, {"a/", "a0"}, {"b/a", ""}, {"b/x", ""}, {"b/", "b/m"}, {"b/", "b0"},
	{"c/1", ""}, {"c/", "\x00"}, {"a/1", "b/z"}, {"\x00", "\x00"},
}

// authOp draws one step.
func authOp(r *rand.Rand) authStep {
	pick := func(xs []string) string { return xs[r.IntN(len(xs))] }
	client := authClients[r.IntN(len(authClients))].name
	users := []string{"alice", "bob", "carol", "root"}
	roles := []string{"ra", "rb", "rc", "root"}
	switch n := r.IntN(100); {
	case n < 16:
		return authChangeOp(r, pick, users, roles)
	case n < 22:
		switch r.IntN(5) {
		case 0:
			return asClient(client, "AuthStatus", func(ctx context.Context, c *clientv3.Client, _ *authSide) (proto.Message, error) {
				return pbResp(c.AuthStatus(ctx))
			})
		case 1:
			u := pick(users)
			return asClient(client, "UserGet "+u, func(ctx context.Context, c *clientv3.Client, _ *authSide) (proto.Message, error) {
				return pbResp(c.UserGet(ctx, u))
			})
		case 2:
			role := pick(roles)
			return asClient(client, "RoleGet "+role, func(ctx context.Context, c *clientv3.Client, _ *authSide) (proto.Message, error) {
				return pbResp(c.RoleGet(ctx, role))
			})
		case 3:
			return asClient(client, "UserList", func(ctx context.Context, c *clientv3.Client, _ *authSide) (proto.Message, error) {
				return pbResp(c.UserList(ctx))
			})
		default:
			return asClient(client, "RoleList", func(ctx context.Context, c *clientv3.Client, _ *authSide) (proto.Message, error) {
				return pbResp(c.RoleList(ctx))
			})
		}
	case n < 68:
		return kvOp(r, client, pick)
	case n < 84:
		return leaseStepOp(r, client, pick)
	default:
		return authWatchStep(r, client, pick)
	}
}

func authChangeOp(r *rand.Rand, pick func([]string) string, users, roles []string) authStep {
	switch r.IntN(12) {
	case 0, 1:
		p := authPerms[r.IntN(len(authPerms))]
		return grantStep(pick(roles[:3]), p, permTypes[r.IntN(len(permTypes))])
	case 2, 3:
		p, role := authPerms[r.IntN(len(authPerms))], pick(roles[:3])
		return authChange(fmt.Sprintf("RoleRevokePermission %s %q %q", role, p.key, p.end), func(a clientv3.Auth, ctx context.Context) (proto.Message, error) {
			return pbResp(a.RoleRevokePermission(ctx, role, p.key, p.end))
		})
	case 4:
		u, role := pick(users), pick(roles)
		return authChange("UserGrantRole "+u+" "+role, func(a clientv3.Auth, ctx context.Context) (proto.Message, error) {
			return pbResp(a.UserGrantRole(ctx, u, role))
		})
	case 5:
		u, role := pick(users), pick(roles)
		return authChange("UserRevokeRole "+u+" "+role, func(a clientv3.Auth, ctx context.Context) (proto.Message, error) {
			return pbResp(a.UserRevokeRole(ctx, u, role))
		})
	case 6:
		u := pick(users[:2])
		pw := map[string][]string{"alice": {"a1", "a2"}, "bob": {"b1", "b2"}}[u][r.IntN(2)]
		return authChange("UserChangePassword "+u+" "+pw, func(a clientv3.Auth, ctx context.Context) (proto.Message, error) {
			return pbResp(a.UserChangePassword(ctx, u, pw))
		})
	case 7:
		if r.IntN(2) == 0 {
			return authChange("UserAdd carol", func(a clientv3.Auth, ctx context.Context) (proto.Message, error) {
				return pbResp(a.UserAdd(ctx, "carol", "c1"))
			})
		}
		return authChange("UserDelete carol", func(a clientv3.Auth, ctx context.Context) (proto.Message, error) {
			return pbResp(a.UserDelete(ctx, "carol"))
		})
	case 8:
		if r.IntN(2) == 0 {
			return authChange("RoleAdd rc", func(a clientv3.Auth, ctx context.Context) (proto.Message, error) { return pbResp(a.RoleAdd(ctx, "rc")) })
		}
		return authChange("RoleDelete rc", func(a clientv3.Auth, ctx context.Context) (proto.Message, error) {
			return pbResp(a.RoleDelete(ctx, "rc"))
		})
	case 9:
		return authChange("AuthDisable", func(a clientv3.Auth, ctx context.Context) (proto.Message, error) { return pbResp(a.AuthDisable(ctx)) })
	case 10:
		// Root's role back, so that AuthEnable can succeed again.
		return authChange("UserGrantRole root root", func(a clientv3.Auth, ctx context.Context) (proto.Message, error) {
			return pbResp(a.UserGrantRole(ctx, "root", "root"))
		})
	default:
		return authChange("AuthEnable", func(a clientv3.Auth, ctx context.Context) (proto.Message, error) { return pbResp(a.AuthEnable(ctx)) })
	}
}

func kvOp(r *rand.Rand, client string, pick func([]string) string) authStep {
	keys := authKeys[r.IntN(len(authKeys))]
	key := pick(keys)
	val := fmt.Sprintf("v%d", r.IntN(1000))
	switch r.IntN(5) {
	case 0, 1:
		rd := authReads[r.IntN(len(authReads))]
		var opts []clientv3.OpOption
		if rd.end != "" {
			opts = append(opts, clientv3.WithRange(rd.end))
		}
		if r.IntN(3) == 0 {
			opts = append(opts, clientv3.WithSerializable())
		}
		return asClient(client, fmt.Sprintf("Get %q %q", rd.key, rd.end), func(ctx context.Context, c *clientv3.Client, _ *authSide) (proto.Message, error) {
			return pbResp(c.Get(ctx, rd.key, opts...))
		})
	case 2:
		prev, li := r.IntN(3) == 0, -1
		if r.IntN(3) == 0 {
			li = r.IntN(4)
		}
		return asClient(client, fmt.Sprintf("Put %q %s prev_kv=%t lease=L%d", key, val, prev, li+1), func(ctx context.Context, c *clientv3.Client, sd *authSide) (proto.Message, error) {
			var opts []clientv3.OpOption
			if prev {
				opts = append(opts, clientv3.WithPrevKV())
			}
			if li >= 0 {
				opts = append(opts, clientv3.WithLease(clientv3.LeaseID(sd.lease(li))))
			}
			return pbResp(c.Put(ctx, key, val, opts...))
		})
	case 3:
		prev, whole := r.IntN(2) == 0, r.IntN(3) == 0
		var opts []clientv3.OpOption
		if prev {
			opts = append(opts, clientv3.WithPrevKV())
		}
		if whole {
			opts = append(opts, clientv3.WithPrefix())
			key = key[:2]
		}
		return asClient(client, fmt.Sprintf("Delete %q prefix=%t prev_kv=%t", key, whole, prev), func(ctx context.Context, c *clientv3.Client, _ *authSide) (proto.Message, error) {
			return pbResp(c.Delete(ctx, key, opts...))
		})
	default:
		other := pick(keys)
		return asClient(client, fmt.Sprintf("Txn if %q=%s then put %q else get %q", key, val, other, other), func(ctx context.Context, c *clientv3.Client, _ *authSide) (proto.Message, error) {
			return pbResp(c.Txn(ctx).If(clientv3.Compare(clientv3.Value(key), "=", val)).
				Then(clientv3.OpPut(other, val)).Else(clientv3.OpGet(other)).Commit())
		})
	}
}

func leaseStepOp(r *rand.Rand, client string, pick func([]string) string) authStep {
	li := r.IntN(4)
	switch r.IntN(3) {
	case 0:
		return asClient(client, "LeaseGrant", func(ctx context.Context, c *clientv3.Client, sd *authSide) (proto.Message, error) {
			resp, err := c.Grant(ctx, 600)
			if err == nil {
				sd.leases = append(sd.leases, int64(resp.ID))
			}
			return pbResp(resp, err)
		})
	case 1:
		return asClient(client, fmt.Sprintf("LeaseRevoke L%d", li+1), func(ctx context.Context, c *clientv3.Client, sd *authSide) (proto.Message, error) {
			return pbResp(c.Revoke(ctx, clientv3.LeaseID(sd.lease(li))))
		})
	default:
		keys := r.IntN(2) == 0
		return asClient(client, fmt.Sprintf("LeaseTimeToLive L%d keys=%t", li+1, keys), func(ctx context.Context, c *clientv3.Client, sd *authSide) (proto.Message, error) {
			var opts []clientv3.LeaseOption
			if keys {
				opts = append(opts, clientv3.WithAttachedKeys())
			}
			return pbResp(c.TimeToLive(ctx, clientv3.LeaseID(sd.lease(li)), opts...))
		})
	}
}

// authWatchStep opens a watch as client on a raw Watch stream (clientv3's
// watcher hides refused creations), and when it is created, has root write
// a key it watches and shows the event that arrives.
func authWatchStep(r *rand.Rand, client string, pick func([]string) string) authStep {
	rd := authReads[r.IntN(len(authReads))]
	var in []string // the keys the watch sees
	for _, ks := range authKeys {
		for _, k := range ks {
			if k == rd.key || (rd.end != "" && k >= rd.key && (rd.end == "\x00" || k < rd.end)) {
				in = append(in, k)
			}
		}
	}
	key := pick(in)
	val := fmt.Sprintf("w%d", r.IntN(1000))
	desc := fmt.Sprintf("%s Watch %q %q, root puts %q", client, rd.key, rd.end, key)
	return authStep{desc: desc, run: func(ctx context.Context, sd *authSide) string {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		ws, err := pb.NewWatchClient(sd.clients[client].ActiveConnection()).Watch(ctx)
		if err != nil {
			return "error " + errText(err)
		}
		req := &pb.WatchCreateRequest{Key: []byte(rd.key)}
		if rd.end != "" {
			req.RangeEnd = []byte(rd.end)
		}
		if err := ws.Send(&pb.WatchRequest{RequestUnion: &pb.WatchRequest_CreateRequest{CreateRequest: req}}); err != nil {
			return "error " + errText(err)
		}
		created, err := ws.Recv()
		if err != nil {
			return "error " + errText(err)
		}
		out := fmt.Sprintf("created=%t canceled=%t reason=%q", created.Created, created.Canceled, created.CancelReason)
		if created.Canceled {
			return out
		}
		resp, err := pbResp(sd.clients["root"].Put(ctx, key, val))
		put := sd.answer("root", resp, err)
		if strings.HasPrefix(put, "error") {
			return out + "; put " + put
		}
		ev, err := ws.Recv()
		if err != nil {
			return out + "; error " + errText(err)
		}
		for _, e := range ev.Events {
			out += fmt.Sprintf("; %v %s=%s", e.Type, e.Kv.Key, e.Kv.Value)
		}
		if ev.Canceled {
			out += fmt.Sprintf("; canceled reason=%q", ev.CancelReason)
		}
		return out
	}}
}
