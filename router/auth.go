package router

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"golang.org/x/crypto/bcrypt"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/shardpb"
	"github.com/cairn-kv/cairn/shard/auth"
)

// DefaultAuthTokenTTL is etcd's --auth-token-ttl: how long a simple token
// lives without use.
const DefaultAuthTokenTTL = 300 * time.Second

// AuthStore reads the cluster's auth state (range 1's, docs/plan-auth.md);
// the node implements it with range 1's replica here.
type AuthStore interface {
	Auth(ctx context.Context, linearizable bool) (*auth.State, error)
}

// authServer is etcd's Auth service. Changes are proposed to range 1
// (Config.Shard) as etcd's InternalRaftRequest; passwords are hashed here
// first (Config.BcryptCost), so the log never carries one.
type authServer struct {
	pb.UnimplementedAuthServer
	s *Server
}

// tokens are the simple tokens this member issued (etcd's simple tokens
// are per member too): token → who and until when. A token is void once
// its user is gone or has another password, or auth was disabled after it
// was issued; its lifetime restarts with every use.
type tokens struct {
	ttl time.Duration
	n   atomic.Uint64
	mu  sync.Mutex
	// m is guarded by mu.
	m map[string]*token
}

type token struct {
	user     string
	password []byte // the user's hash when issued
	issued   uint64 // the auth revision when issued
	expires  time.Time
}

const tokenLetters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

// issue returns a new token for user as st has it.
func (t *tokens) issue(st *auth.State, user string, now time.Time) (string, error) {
	var b strings.Builder
	for range 16 {
		i, err := rand.Int(rand.Reader, big.NewInt(int64(len(tokenLetters))))
		if err != nil {
			return "", err
		}
		b.WriteByte(tokenLetters[i.Int64()])
	}
	fmt.Fprintf(&b, ".%d", t.n.Add(1))
	tok := b.String()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m == nil {
		t.m = map[string]*token{}
	}
	for k, v := range t.m {
		if now.After(v.expires) {
			delete(t.m, k)
		}
	}
	t.m[tok] = &token{user: user, password: st.User(user).Password, issued: st.Revision(), expires: now.Add(t.ttl)}
	return tok, nil
}

// user returns the user tok stands for under st, or false if it is void.
func (t *tokens) user(st *auth.State, tok string, now time.Time) (string, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.m[tok]
	if e == nil || now.After(e.expires) {
		delete(t.m, tok)
		return "", false
	}
	u := st.User(e.user)
	if u == nil || !bytes.Equal(u.Password, e.password) || e.issued < st.DisabledAt() {
		delete(t.m, tok)
		return "", false
	}
	e.expires = now.Add(t.ttl)
	return e.user, true
}

// caller is who made a request and the auth state it is checked against.
type caller struct {
	user string
	st   *auth.State
	// leaseKeys returns the keys attached to a lease (set with auth
	// enabled, for checkLeaseKeys).
	leaseKeys func(id int64) ([][]byte, error)
}

// info is what a write carries to be checked again where it applies.
func (c caller) info() *shardpb.AuthInfo {
	return &shardpb.AuthInfo{User: c.user, Revision: c.st.Revision()}
}

type callerKey struct{}

// commonName is the common name of the verified client certificate of
// ctx's connection, "" if it has none (no TLS, or an unverified one), as
// etcd's AuthInfoFromTLS takes the first verified chain's leaf. The JSON
// gateway's calls come over an in-process connection without TLS, so an
// HTTP request is never taken for the certificate's user (etcd refuses
// that too).
func commonName(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return ""
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return ""
	}
	for _, chain := range ti.State.VerifiedChains {
		if len(chain) > 0 {
			return chain[0].Subject.CommonName
		}
	}
	return ""
}

// caller identifies the caller of ctx: with auth enabled, the user of
// the token in its metadata ("token", or "authorization" as etcd's
// gateway sends it); without a token, with Config.ClientCertAuth, the
// common name of its verified client certificate, else none. A void token
// is etcd's ErrInvalidAuthToken. Without an AuthStore, auth is never
// enabled.
func (s *Server) caller(ctx context.Context) (caller, error) {
	if c, ok := ctx.Value(callerKey{}).(caller); ok {
		return c, nil
	}
	if s.cfg.Auth == nil {
		return caller{st: auth.New()}, nil
	}
	st, err := s.cfg.Auth.Auth(ctx, false)
	if err != nil {
		return caller{}, toGRPC(err)
	}
	c := caller{st: st}
	if !st.Enabled() {
		return c, nil
	}
	c.leaseKeys = func(id int64) ([][]byte, error) { return s.leaseKeys(ctx, id) }
	md, _ := metadata.FromIncomingContext(ctx)
	ts := md.Get(rpctypes.TokenFieldNameGRPC)
	if len(ts) == 0 {
		ts = md.Get(rpctypes.TokenFieldNameSwagger)
	}
	if len(ts) == 0 {
		if s.cfg.ClientCertAuth {
			c.user = commonName(ctx)
		}
		return c, nil
	}
	tok := strings.TrimPrefix(ts[0], "Bearer ")
	if s.cfg.JWT != nil {
		user, rev, ok := s.cfg.JWT.user(tok)
		switch {
		case !ok:
			return caller{}, rpctypes.ErrGRPCInvalidAuthToken
		case rev < st.Revision():
			// Issued before an auth change (etcd's check of the
			// token's revision): clientv3 authenticates again.
			return caller{}, rpctypes.ErrGRPCAuthOldRevision
		}
		c.user = user
		return c, nil
	}
	user, ok := s.tokens.user(st, tok, time.Now())
	if !ok {
		return caller{}, rpctypes.ErrGRPCInvalidAuthToken
	}
	c.user = user
	return c, nil
}

// authorize identifies the caller, runs check against its state and
// returns ctx carrying the caller (write sends it with the request), or
// the refusal as etcd's status.
// A refusal by a cached auth state is checked once more against a state
// read since the request began (authcache.go).
func (s *Server) authorize(ctx context.Context, check func(c caller) error) (context.Context, error) {
	_, checked := ctx.Value(callerKey{}).(caller)
	start := s.authStart()
	for again := !checked; ; again = false {
		c, err := s.caller(ctx)
		if err == nil {
			if err = check(c); err != nil {
				err = toGRPC(err)
			}
		}
		if err == nil {
			return context.WithValue(ctx, callerKey{}, c), nil
		}
		if !again || !s.checkAgain(ctx, err, c.st, start) {
			return ctx, err
		}
	}
}

// requireAdmin refuses, with auth enabled, a caller without the root role
// (etcd's isPermitted).
func (s *Server) requireAdmin(ctx context.Context) error {
	_, err := s.authorize(ctx, func(c caller) error { return c.st.CheckAdmin(c.user) })
	return err
}

// requireUser refuses, with auth enabled, a caller without a user (etcd's
// requireAuthInfo).
func (s *Server) requireUser(ctx context.Context) error {
	_, err := s.authorize(ctx, func(c caller) error {
		if c.st.Enabled() && c.user == "" {
			return auth.ErrUserEmpty
		}
		return nil
	})
	return err
}

// authInfo is the AuthInfo a write from ctx carries (nil: not a checked
// client request).
func authInfo(ctx context.Context) *shardpb.AuthInfo {
	if c, ok := ctx.Value(callerKey{}).(caller); ok {
		return c.info()
	}
	return nil
}

// The permission checks of the KV service, as etcd's.

func checkRange(c caller, r *pb.RangeRequest) error {
	return c.st.Check(c.user, r.Key, r.RangeEnd, authpb.Permission_READ)
}

// checkPut checks WRITE on the key, WRITE on the keys already attached to
// the lease it names, READ on the key with prev_kv, in etcd's order.
func checkPut(c caller, r *pb.PutRequest) error {
	if err := c.st.Check(c.user, r.Key, nil, authpb.Permission_WRITE); err != nil {
		return err
	}
	if err := c.checkLeaseKeys(r.Lease, authpb.Permission_WRITE); err != nil {
		return err
	}
	if r.PrevKv {
		return c.st.Check(c.user, r.Key, nil, authpb.Permission_READ)
	}
	return nil
}

func checkDeleteRange(c caller, r *pb.DeleteRangeRequest) error {
	if err := c.st.Check(c.user, r.Key, r.RangeEnd, authpb.Permission_WRITE); err != nil {
		return err
	}
	if r.PrevKv {
		return c.st.Check(c.user, r.Key, r.RangeEnd, authpb.Permission_READ)
	}
	return nil
}

// checkTxn checks every compare, then every op of both branches, nested
// txns included, in etcd's order.
func checkTxn(c caller, r *pb.TxnRequest) error {
	for _, cmp := range r.Compare {
		if err := c.st.Check(c.user, cmp.Key, cmp.RangeEnd, authpb.Permission_READ); err != nil {
			return err
		}
	}
	for _, ops := range [][]*pb.RequestOp{r.Success, r.Failure} {
		for _, op := range ops {
			var err error
			switch {
			case op.GetRequestRange() != nil:
				err = checkRange(c, op.GetRequestRange())
			case op.GetRequestPut() != nil:
				err = checkPut(c, op.GetRequestPut())
			case op.GetRequestDeleteRange() != nil:
				d := op.GetRequestDeleteRange()
				if d.PrevKv {
					err = c.st.Check(c.user, d.Key, d.RangeEnd, authpb.Permission_READ)
				}
				if err == nil {
					err = c.st.Check(c.user, d.Key, d.RangeEnd, authpb.Permission_WRITE)
				}
			case op.GetRequestTxn() != nil:
				err = checkTxn(c, op.GetRequestTxn())
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// The Auth service.

// change proposes an auth request to range 1 as the caller (checked as
// admin if admin) and decodes etcd's answer into resp.
func (a *authServer) change(ctx context.Context, r *pb.InternalRaftRequest, resp proto.Message, header func() *pb.ResponseHeader, admin bool) error {
	ctx, err := a.s.authorize(ctx, func(c caller) error {
		if admin {
			return c.st.CheckAdmin(c.user)
		}
		return nil
	})
	if err != nil {
		return err
	}
	data, err := proto.Marshal(r)
	if err != nil {
		return toGRPC(err)
	}
	// A call without a user (AuthStatus) is not a client write to check
	// again where it applies.
	info := authInfo(ctx)
	if info != nil && info.User == "" {
		info = nil
	}
	out, err := a.s.cfg.Shard.Write(ctx, &shardpb.Request{Op: &shardpb.Request_Auth{Auth: data}, AuthInfo: info})
	if err != nil {
		return toGRPC(err)
	}
	if mutates(r) {
		// Answered only once every range refuses what was checked
		// before the change (authfence.go).
		if err := a.s.fenceAll(ctx); err != nil {
			return toGRPC(err)
		}
	}
	return a.s.decode(out.GetAuth(), resp, header)
}

func (a *authServer) hash(password string) (string, error) {
	h, err := bcrypt.GenerateFromPassword([]byte(password), a.s.bcryptCost())
	if err != nil {
		return "", toGRPC(err)
	}
	return base64.StdEncoding.EncodeToString(h), nil
}

func (s *Server) bcryptCost() int {
	if c := s.cfg.BcryptCost; c >= bcrypt.MinCost && c <= bcrypt.MaxCost {
		return c
	}
	return bcrypt.DefaultCost
}

func (a *authServer) AuthEnable(ctx context.Context, r *pb.AuthEnableRequest) (*pb.AuthEnableResponse, error) {
	resp := &pb.AuthEnableResponse{}
	return resp, a.change(ctx, &pb.InternalRaftRequest{AuthEnable: r}, resp, resp.GetHeader, true)
}

func (a *authServer) AuthDisable(ctx context.Context, r *pb.AuthDisableRequest) (*pb.AuthDisableResponse, error) {
	resp := &pb.AuthDisableResponse{}
	return resp, a.change(ctx, &pb.InternalRaftRequest{AuthDisable: r}, resp, resp.GetHeader, true)
}

func (a *authServer) AuthStatus(ctx context.Context, r *pb.AuthStatusRequest) (*pb.AuthStatusResponse, error) {
	resp := &pb.AuthStatusResponse{}
	return resp, a.change(ctx, &pb.InternalRaftRequest{AuthStatus: r}, resp, resp.GetHeader, false)
}

// Authenticate checks the password against the state read linearizably
// (bcrypt, outside any lock) and issues a simple token of this member or
// a JWT token any member verifies.
func (a *authServer) Authenticate(ctx context.Context, r *pb.AuthenticateRequest) (*pb.AuthenticateResponse, error) {
	if a.s.cfg.Auth == nil {
		return nil, rpctypes.ErrGRPCAuthNotEnabled
	}
	st, err := a.s.cfg.Auth.Auth(ctx, true)
	if err != nil {
		return nil, toGRPC(err)
	}
	if !st.Enabled() {
		return nil, rpctypes.ErrGRPCAuthNotEnabled
	}
	u := st.User(r.Name)
	if u == nil {
		return nil, rpctypes.ErrGRPCAuthFailed
	}
	if u.Options != nil && u.Options.NoPassword {
		return nil, toGRPC(auth.ErrNoPasswordUser)
	}
	if bcrypt.CompareHashAndPassword(u.Password, []byte(r.Password)) != nil {
		return nil, rpctypes.ErrGRPCAuthFailed
	}
	var tok string
	if a.s.cfg.JWT != nil {
		tok, err = a.s.cfg.JWT.issue(r.Name, st.Revision(), time.Now())
	} else {
		tok, err = a.s.tokens.issue(st, r.Name, time.Now())
	}
	if err != nil {
		return nil, toGRPC(err)
	}
	h := &pb.ResponseHeader{}
	if s, err := a.s.cfg.Shard.Status(ctx, false); err == nil {
		h.Revision = int64(s.Revision)
	}
	a.s.fill(h)
	return &pb.AuthenticateResponse{Header: h, Token: tok}, nil
}

func (a *authServer) UserAdd(ctx context.Context, r *pb.AuthUserAddRequest) (*pb.AuthUserAddResponse, error) {
	r = proto.Clone(r).(*pb.AuthUserAddRequest)
	if r.Options == nil || !r.Options.NoPassword {
		h, err := a.hash(r.Password)
		if err != nil {
			return nil, err
		}
		r.HashedPassword, r.Password = h, ""
	}
	resp := &pb.AuthUserAddResponse{}
	return resp, a.change(ctx, &pb.InternalRaftRequest{AuthUserAdd: r}, resp, resp.GetHeader, true)
}

func (a *authServer) UserDelete(ctx context.Context, r *pb.AuthUserDeleteRequest) (*pb.AuthUserDeleteResponse, error) {
	resp := &pb.AuthUserDeleteResponse{}
	return resp, a.change(ctx, &pb.InternalRaftRequest{AuthUserDelete: r}, resp, resp.GetHeader, true)
}

func (a *authServer) UserChangePassword(ctx context.Context, r *pb.AuthUserChangePasswordRequest) (*pb.AuthUserChangePasswordResponse, error) {
	r = proto.Clone(r).(*pb.AuthUserChangePasswordRequest)
	if r.Password != "" {
		h, err := a.hash(r.Password)
		if err != nil {
			return nil, err
		}
		r.HashedPassword, r.Password = h, ""
	}
	resp := &pb.AuthUserChangePasswordResponse{}
	return resp, a.change(ctx, &pb.InternalRaftRequest{AuthUserChangePassword: r}, resp, resp.GetHeader, true)
}

func (a *authServer) UserGrantRole(ctx context.Context, r *pb.AuthUserGrantRoleRequest) (*pb.AuthUserGrantRoleResponse, error) {
	resp := &pb.AuthUserGrantRoleResponse{}
	return resp, a.change(ctx, &pb.InternalRaftRequest{AuthUserGrantRole: r}, resp, resp.GetHeader, true)
}

func (a *authServer) UserRevokeRole(ctx context.Context, r *pb.AuthUserRevokeRoleRequest) (*pb.AuthUserRevokeRoleResponse, error) {
	resp := &pb.AuthUserRevokeRoleResponse{}
	return resp, a.change(ctx, &pb.InternalRaftRequest{AuthUserRevokeRole: r}, resp, resp.GetHeader, true)
}

// UserGet needs root, except for one's own user (as etcd).
func (a *authServer) UserGet(ctx context.Context, r *pb.AuthUserGetRequest) (*pb.AuthUserGetResponse, error) {
	c, err := a.s.caller(ctx)
	if err != nil {
		return nil, err
	}
	admin := c.st.CheckAdmin(c.user) != nil && r.Name != c.user
	resp := &pb.AuthUserGetResponse{}
	return resp, a.change(ctx, &pb.InternalRaftRequest{AuthUserGet: r}, resp, resp.GetHeader, admin)
}

func (a *authServer) UserList(ctx context.Context, r *pb.AuthUserListRequest) (*pb.AuthUserListResponse, error) {
	resp := &pb.AuthUserListResponse{}
	return resp, a.change(ctx, &pb.InternalRaftRequest{AuthUserList: r}, resp, resp.GetHeader, true)
}

func (a *authServer) RoleAdd(ctx context.Context, r *pb.AuthRoleAddRequest) (*pb.AuthRoleAddResponse, error) {
	resp := &pb.AuthRoleAddResponse{}
	return resp, a.change(ctx, &pb.InternalRaftRequest{AuthRoleAdd: r}, resp, resp.GetHeader, true)
}

func (a *authServer) RoleDelete(ctx context.Context, r *pb.AuthRoleDeleteRequest) (*pb.AuthRoleDeleteResponse, error) {
	resp := &pb.AuthRoleDeleteResponse{}
	return resp, a.change(ctx, &pb.InternalRaftRequest{AuthRoleDelete: r}, resp, resp.GetHeader, true)
}

// RoleGet needs root, except for a role one has (as etcd).
func (a *authServer) RoleGet(ctx context.Context, r *pb.AuthRoleGetRequest) (*pb.AuthRoleGetResponse, error) {
	c, err := a.s.caller(ctx)
	if err != nil {
		return nil, err
	}
	admin := c.st.CheckAdmin(c.user) != nil && !c.st.HasRole(c.user, r.Role)
	resp := &pb.AuthRoleGetResponse{}
	return resp, a.change(ctx, &pb.InternalRaftRequest{AuthRoleGet: r}, resp, resp.GetHeader, admin)
}

func (a *authServer) RoleList(ctx context.Context, r *pb.AuthRoleListRequest) (*pb.AuthRoleListResponse, error) {
	resp := &pb.AuthRoleListResponse{}
	return resp, a.change(ctx, &pb.InternalRaftRequest{AuthRoleList: r}, resp, resp.GetHeader, true)
}

func (a *authServer) RoleGrantPermission(ctx context.Context, r *pb.AuthRoleGrantPermissionRequest) (*pb.AuthRoleGrantPermissionResponse, error) {
	resp := &pb.AuthRoleGrantPermissionResponse{}
	return resp, a.change(ctx, &pb.InternalRaftRequest{AuthRoleGrantPermission: r}, resp, resp.GetHeader, true)
}

func (a *authServer) RoleRevokePermission(ctx context.Context, r *pb.AuthRoleRevokePermissionRequest) (*pb.AuthRoleRevokePermissionResponse, error) {
	resp := &pb.AuthRoleRevokePermissionResponse{}
	return resp, a.change(ctx, &pb.InternalRaftRequest{AuthRoleRevokePermission: r}, resp, resp.GetHeader, true)
}
