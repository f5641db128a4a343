package auth

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/authpb"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/protobuf/proto"

	"github.com/cairn-kv/cairn/proto/shardpb"
)

// RootUser and RootRole are etcd's: the user AuthEnable requires, and the
// role that grants everything.
const (
	RootUser = "root"
	RootRole = "root"
)

// The refusals, one per etcd auth error; the router maps each to etcd's
// rpctypes status. Their messages are unique (FromMessage relies on it).
var (
	ErrRootUserNotExist     = errors.New("auth: root user does not exist")
	ErrRootRoleNotExist     = errors.New("auth: root user does not have root role")
	ErrUserAlreadyExist     = errors.New("auth: user already exists")
	ErrUserEmpty            = errors.New("auth: user name is empty")
	ErrUserNotFound         = errors.New("auth: user not found")
	ErrRoleAlreadyExist     = errors.New("auth: role already exists")
	ErrRoleNotFound         = errors.New("auth: role not found")
	ErrRoleEmpty            = errors.New("auth: role name is empty")
	ErrPermissionNotGiven   = errors.New("auth: permission not given")
	ErrAuthFailed           = errors.New("auth: authentication failed, invalid user ID or password")
	ErrNoPasswordUser       = errors.New("auth: authentication failed, password was given for no password user")
	ErrPermissionDenied     = errors.New("auth: permission denied")
	ErrRoleNotGranted       = errors.New("auth: role is not granted to the user")
	ErrPermissionNotGranted = errors.New("auth: permission is not granted to the role")
	ErrAuthNotEnabled       = errors.New("auth: authentication is not enabled")
	ErrAuthOldRevision      = errors.New("auth: revision in header is old")
	ErrInvalidAuthToken     = errors.New("auth: invalid auth token")
	ErrInvalidAuthMgmt      = errors.New("auth: invalid auth management")
)

var all = []error{ErrRootUserNotExist, ErrRootRoleNotExist, ErrUserAlreadyExist, ErrUserEmpty,
	ErrUserNotFound, ErrRoleAlreadyExist, ErrRoleNotFound, ErrRoleEmpty, ErrPermissionNotGiven,
	ErrAuthFailed, ErrNoPasswordUser, ErrPermissionDenied, ErrRoleNotGranted, ErrPermissionNotGranted,
	ErrAuthNotEnabled, ErrAuthOldRevision, ErrInvalidAuthToken, ErrInvalidAuthMgmt}

// Sentinel returns the refusal of this package err is (errors.Is), or nil.
func Sentinel(err error) error {
	for _, e := range all {
		if errors.Is(err, e) {
			return e
		}
	}
	return nil
}

// FromMessage returns the refusal whose message msg is, or nil: a refusal
// that crossed the wire as text is matched again by it.
func FromMessage(msg string) error {
	for _, e := range all {
		if e.Error() == msg {
			return e
		}
	}
	return nil
}

// rootPerm is what RoleGet shows for the root role: the whole key space.
func rootPerm() *authpb.Permission {
	return &authpb.Permission{PermType: authpb.Permission_READWRITE, Key: []byte{}, RangeEnd: []byte{0}}
}

// State is the auth state of a cluster: whether auth is enabled, its
// revision, users and roles. A State is never changed once made: Apply
// returns a new one, so readers share it without locks.
//
// Invariant: every user's roles are sorted and unique; every role's
// permissions are sorted by key.
// Invariant: revision ≥ 1 and grows by one with every change but
// AuthEnable (as etcd's); disabledAt is the revision the last AuthDisable
// took, 0 if none.
type State struct {
	enabled    bool
	revision   uint64
	disabledAt uint64
	users      map[string]*authpb.User
	roles      map[string]*authpb.Role
}

// New returns the state of a cluster that never configured auth: disabled,
// no users or roles, revision 1 (etcd commits revision 1 when it creates
// its auth store).
func New() *State {
	return &State{revision: 1, users: map[string]*authpb.User{}, roles: map[string]*authpb.Role{}}
}

// Enabled reports whether auth is enabled.
func (s *State) Enabled() bool { return s.enabled }

// Revision is the auth revision.
func (s *State) Revision() uint64 { return s.revision }

// DisabledAt is the revision of the last AuthDisable (0: none): a token
// issued at an older revision is void.
func (s *State) DisabledAt() uint64 { return s.disabledAt }

// User returns user name (not to be modified), or nil.
func (s *State) User(name string) *authpb.User { return s.users[name] }

// HasRole reports whether user has role.
func (s *State) HasRole(user, role string) bool {
	u := s.users[user]
	return u != nil && slices.Contains(u.Roles, role)
}

// Marshal encodes the state as one record.
func (s *State) Marshal() ([]byte, error) {
	out := &shardpb.AuthState{Enabled: s.enabled, Revision: s.revision, DisabledAt: s.disabledAt}
	for _, name := range sortedKeys(s.users) {
		b, err := proto.Marshal(s.users[name])
		if err != nil {
			return nil, err
		}
		out.Users = append(out.Users, b)
	}
	for _, name := range sortedKeys(s.roles) {
		b, err := proto.Marshal(s.roles[name])
		if err != nil {
			return nil, err
		}
		out.Roles = append(out.Roles, b)
	}
	return proto.Marshal(out)
}

// Unmarshal decodes a record Marshal wrote.
func Unmarshal(data []byte) (*State, error) {
	var in shardpb.AuthState
	if err := proto.Unmarshal(data, &in); err != nil {
		return nil, fmt.Errorf("auth: undecodable state: %w", err)
	}
	s := New()
	s.enabled, s.revision, s.disabledAt = in.Enabled, in.Revision, in.DisabledAt
	for _, b := range in.Users {
		u := &authpb.User{}
		if err := proto.Unmarshal(b, u); err != nil {
			return nil, fmt.Errorf("auth: undecodable user: %w", err)
		}
		s.users[string(u.Name)] = u
	}
	for _, b := range in.Roles {
		r := &authpb.Role{}
		if err := proto.Unmarshal(b, r); err != nil {
			return nil, fmt.Errorf("auth: undecodable role: %w", err)
		}
		s.roles[string(r.Name)] = r
	}
	return s, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// clone is a copy of s whose maps may change; users and roles are shared
// until replaced (never modified in place).
func (s *State) clone() *State {
	c := *s
	c.users = make(map[string]*authpb.User, len(s.users))
	for k, v := range s.users {
		c.users[k] = v
	}
	c.roles = make(map[string]*authpb.Role, len(s.roles))
	for k, v := range s.roles {
		c.roles[k] = v
	}
	return &c
}

// Changes reports whether r, an InternalRaftRequest carrying one auth
// request, is one that may change the state (not a read: AuthStatus,
// UserGet, UserList, RoleGet, RoleList).
func Changes(r *pb.InternalRaftRequest) bool {
	return r.AuthEnable != nil || r.AuthDisable != nil || r.AuthUserAdd != nil || r.AuthUserDelete != nil ||
		r.AuthUserChangePassword != nil || r.AuthUserGrantRole != nil || r.AuthUserRevokeRole != nil ||
		r.AuthRoleAdd != nil || r.AuthRoleGrantPermission != nil || r.AuthRoleRevokePermission != nil ||
		r.AuthRoleDelete != nil
}

// Apply applies r, an InternalRaftRequest carrying one auth request, and
// returns the state after it (s itself if nothing changed) and etcd's
// response (its header left for the caller), or a refusal of this package
// with s unchanged. Passwords must come hashed (HashedPassword, base64 of
// the bcrypt hash), as etcd's API layer sends them.
func (s *State) Apply(r *pb.InternalRaftRequest) (*State, proto.Message, error) {
	switch {
	case r.AuthEnable != nil:
		if s.enabled {
			return s, &pb.AuthEnableResponse{}, nil
		}
		u := s.users[RootUser]
		if u == nil {
			return s, nil, ErrRootUserNotExist
		}
		if !slices.Contains(u.Roles, RootRole) {
			return s, nil, ErrRootRoleNotExist
		}
		n := s.clone()
		n.enabled = true
		return n, &pb.AuthEnableResponse{}, nil
	case r.AuthDisable != nil:
		if !s.enabled {
			return s, &pb.AuthDisableResponse{}, nil
		}
		n := s.clone()
		n.enabled = false
		n.revision++
		n.disabledAt = n.revision
		return n, &pb.AuthDisableResponse{}, nil
	case r.AuthStatus != nil:
		return s, &pb.AuthStatusResponse{Enabled: s.enabled, AuthRevision: s.revision}, nil
	case r.AuthUserAdd != nil:
		return s.userAdd(r.AuthUserAdd)
	case r.AuthUserDelete != nil:
		q := r.AuthUserDelete
		if s.enabled && q.Name == RootUser {
			return s, nil, ErrInvalidAuthMgmt
		}
		if s.users[q.Name] == nil {
			return s, nil, ErrUserNotFound
		}
		n := s.clone()
		delete(n.users, q.Name)
		n.revision++
		return n, &pb.AuthUserDeleteResponse{}, nil
	case r.AuthUserChangePassword != nil:
		q := r.AuthUserChangePassword
		u := s.users[q.Name]
		if u == nil {
			return s, nil, ErrUserNotFound
		}
		var password []byte
		if u.Options == nil || !u.Options.NoPassword {
			p, err := base64.StdEncoding.DecodeString(q.HashedPassword)
			if err != nil {
				return s, nil, ErrNoPasswordUser
			}
			password = p
		}
		n := s.clone()
		n.users[q.Name] = &authpb.User{Name: u.Name, Roles: u.Roles, Password: password, Options: u.Options}
		n.revision++
		return n, &pb.AuthUserChangePasswordResponse{}, nil
	case r.AuthUserGrantRole != nil:
		q := r.AuthUserGrantRole
		u := s.users[q.User]
		if u == nil {
			return s, nil, ErrUserNotFound
		}
		if q.Role != RootRole && s.roles[q.Role] == nil {
			return s, nil, ErrRoleNotFound
		}
		if slices.Contains(u.Roles, q.Role) {
			return s, &pb.AuthUserGrantRoleResponse{}, nil
		}
		roles := append(slices.Clone(u.Roles), q.Role)
		slices.Sort(roles)
		n := s.clone()
		n.users[q.User] = &authpb.User{Name: u.Name, Roles: roles, Password: u.Password, Options: u.Options}
		n.revision++
		return n, &pb.AuthUserGrantRoleResponse{}, nil
	case r.AuthUserGet != nil:
		u := s.users[r.AuthUserGet.Name]
		if u == nil {
			return s, nil, ErrUserNotFound
		}
		return s, &pb.AuthUserGetResponse{Roles: slices.Clone(u.Roles)}, nil
	case r.AuthUserList != nil:
		return s, &pb.AuthUserListResponse{Users: sortedKeys(s.users)}, nil
	case r.AuthUserRevokeRole != nil:
		q := r.AuthUserRevokeRole
		if s.enabled && q.Name == RootUser && q.Role == RootRole {
			return s, nil, ErrInvalidAuthMgmt
		}
		u := s.users[q.Name]
		if u == nil {
			return s, nil, ErrUserNotFound
		}
		i := slices.Index(u.Roles, q.Role)
		if i < 0 {
			return s, nil, ErrRoleNotGranted
		}
		n := s.clone()
		n.users[q.Name] = &authpb.User{Name: u.Name, Roles: slices.Delete(slices.Clone(u.Roles), i, i+1),
			Password: u.Password, Options: u.Options}
		n.revision++
		return n, &pb.AuthUserRevokeRoleResponse{}, nil
	case r.AuthRoleAdd != nil:
		q := r.AuthRoleAdd
		if q.Name == "" {
			return s, nil, ErrRoleEmpty
		}
		if s.roles[q.Name] != nil {
			return s, nil, ErrRoleAlreadyExist
		}
		n := s.clone()
		n.roles[q.Name] = &authpb.Role{Name: []byte(q.Name)}
		n.revision++
		return n, &pb.AuthRoleAddResponse{}, nil
	case r.AuthRoleGet != nil:
		role := s.roles[r.AuthRoleGet.Role]
		if role == nil {
			return s, nil, ErrRoleNotFound
		}
		if r.AuthRoleGet.Role == RootRole {
			return s, &pb.AuthRoleGetResponse{Perm: []*authpb.Permission{rootPerm()}}, nil
		}
		perms := make([]*authpb.Permission, len(role.KeyPermission))
		for i, p := range role.KeyPermission {
			perms[i] = proto.Clone(p).(*authpb.Permission)
		}
		return s, &pb.AuthRoleGetResponse{Perm: perms}, nil
	case r.AuthRoleList != nil:
		return s, &pb.AuthRoleListResponse{Roles: sortedKeys(s.roles)}, nil
	case r.AuthRoleGrantPermission != nil:
		return s.grant(r.AuthRoleGrantPermission)
	case r.AuthRoleRevokePermission != nil:
		q := r.AuthRoleRevokePermission
		role := s.roles[q.Role]
		if role == nil {
			return s, nil, ErrRoleNotFound
		}
		kept := slices.DeleteFunc(slices.Clone(role.KeyPermission), func(p *authpb.Permission) bool {
			return bytes.Equal(p.Key, q.Key) && bytes.Equal(p.RangeEnd, q.RangeEnd)
		})
		if len(kept) == len(role.KeyPermission) {
			return s, nil, ErrPermissionNotGranted
		}
		n := s.clone()
		n.roles[q.Role] = &authpb.Role{Name: role.Name, KeyPermission: kept}
		n.revision++
		return n, &pb.AuthRoleRevokePermissionResponse{}, nil
	case r.AuthRoleDelete != nil:
		q := r.AuthRoleDelete
		if s.enabled && q.Role == RootRole {
			return s, nil, ErrInvalidAuthMgmt
		}
		if s.roles[q.Role] == nil {
			return s, nil, ErrRoleNotFound
		}
		n := s.clone()
		delete(n.roles, q.Role)
		for name, u := range n.users {
			if i := slices.Index(u.Roles, q.Role); i >= 0 {
				n.users[name] = &authpb.User{Name: u.Name, Roles: slices.Delete(slices.Clone(u.Roles), i, i+1),
					Password: u.Password, Options: u.Options}
			}
		}
		n.revision++
		return n, &pb.AuthRoleDeleteResponse{}, nil
	}
	return s, nil, fmt.Errorf("auth: not an auth request: %v", r)
}

func (s *State) userAdd(q *pb.AuthUserAddRequest) (*State, proto.Message, error) {
	if q.Name == "" {
		return s, nil, ErrUserEmpty
	}
	if s.users[q.Name] != nil {
		return s, nil, ErrUserAlreadyExist
	}
	opts := q.Options
	if opts == nil {
		opts = &authpb.UserAddOptions{}
	}
	var password []byte
	if !opts.NoPassword {
		p, err := base64.StdEncoding.DecodeString(q.HashedPassword)
		if err != nil {
			return s, nil, ErrNoPasswordUser
		}
		password = p
	}
	n := s.clone()
	n.users[q.Name] = &authpb.User{Name: []byte(q.Name), Password: password, Options: opts}
	n.revision++
	return n, &pb.AuthUserAddResponse{}, nil
}

func (s *State) grant(q *pb.AuthRoleGrantPermissionRequest) (*State, proto.Message, error) {
	if q.Perm == nil {
		return s, nil, ErrPermissionNotGiven
	}
	if !validPermissionRange(q.Perm.Key, q.Perm.RangeEnd) {
		return s, nil, ErrInvalidAuthMgmt
	}
	role := s.roles[q.Name]
	if role == nil {
		return s, nil, ErrRoleNotFound
	}
	perms := make([]*authpb.Permission, len(role.KeyPermission))
	for i, p := range role.KeyPermission {
		perms[i] = proto.Clone(p).(*authpb.Permission)
	}
	// As etcd: the first permission at the key, if its end is the same,
	// takes the new type; otherwise the permission is added.
	i, _ := slices.BinarySearchFunc(perms, q.Perm.Key, func(p *authpb.Permission, k []byte) int { return bytes.Compare(p.Key, k) })
	if i < len(perms) && bytes.Equal(perms[i].Key, q.Perm.Key) && bytes.Equal(perms[i].RangeEnd, q.Perm.RangeEnd) {
		perms[i].PermType = q.Perm.PermType
	} else {
		perms = append(perms, &authpb.Permission{Key: q.Perm.Key, RangeEnd: q.Perm.RangeEnd, PermType: q.Perm.PermType})
		slices.SortStableFunc(perms, func(a, b *authpb.Permission) int { return bytes.Compare(a.Key, b.Key) })
	}
	n := s.clone()
	n.roles[q.Name] = &authpb.Role{Name: role.Name, KeyPermission: perms}
	n.revision++
	return n, &pb.AuthRoleGrantPermissionResponse{}, nil
}

// validPermissionRange is etcd's rule: a key is required; an end, if
// given, lies after it or is "\x00" (every key from the key on).
func validPermissionRange(key, end []byte) bool {
	if len(key) == 0 {
		return false
	}
	if len(end) == 0 {
		return true
	}
	return compareBound(key, end) < 0 || isOpenEnded(end)
}

func isOpenEnded(end []byte) bool { return len(end) == 1 && end[0] == 0 }

// String renders the state for tests: enabled, revision, users with their
// roles, roles with their permissions.
func (s *State) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "enabled=%t revision=%d\n", s.enabled, s.revision)
	for _, name := range sortedKeys(s.users) {
		u := s.users[name]
		fmt.Fprintf(&b, "user %s roles=%v nopassword=%t\n", name, u.Roles, u.Options != nil && u.Options.NoPassword)
	}
	for _, name := range sortedKeys(s.roles) {
		fmt.Fprintf(&b, "role %s", name)
		for _, p := range s.roles[name].KeyPermission {
			fmt.Fprintf(&b, " %s[%q,%q)", p.PermType, p.Key, p.RangeEnd)
		}
		b.WriteString("\n")
	}
	return b.String()
}
