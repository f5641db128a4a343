package auth

import (
	"bytes"
	"slices"

	"go.etcd.io/etcd/api/v3/authpb"
)

// Permission checks, as etcd makes them. A permission or a request names
// keys as etcd's API does: an end that is empty is the key alone, "\x00"
// every key from the key on, anything else [key, end). A user's permissions
// of one type are the union of its roles'; a request over a range needs
// the whole range covered by that union, a request of one key a
// permission holding the key.
//
// Bounds compare as etcd's interval tree compares them: an empty bound is
// above every key, so a request whose key is empty is never permitted to
// anyone but root.

// CheckAdmin is etcd's IsAdminPermitted: with auth enabled, user must exist
// and have the root role.
func (s *State) CheckAdmin(user string) error {
	if !s.enabled {
		return nil
	}
	if user == "" {
		return ErrUserEmpty
	}
	u := s.users[user]
	if u == nil {
		return ErrUserNotFound
	}
	if !slices.Contains(u.Roles, RootRole) {
		return ErrPermissionDenied
	}
	return nil
}

// Check is etcd's permission check of typ (READ or WRITE) for user over key
// and end: nil with auth disabled or for a user with the root role;
// ErrUserEmpty without a user, ErrPermissionDenied for an unknown user or
// one whose roles do not cover the keys.
func (s *State) Check(user string, key, end []byte, typ authpb.Permission_Type) error {
	if !s.enabled {
		return nil
	}
	if user == "" {
		return ErrUserEmpty
	}
	u := s.users[user]
	if u == nil {
		return ErrPermissionDenied
	}
	if slices.Contains(u.Roles, RootRole) {
		return nil
	}
	if s.covered(u, key, end, typ) {
		return nil
	}
	return ErrPermissionDenied
}

// interval is [begin, end) with etcd's bounds (empty: above every key).
type interval struct{ begin, end []byte }

// compareBound orders bounds: bytes order, an empty bound above all.
func compareBound(a, b []byte) int {
	switch {
	case len(a) == 0 && len(b) == 0:
		return 0
	case len(a) == 0:
		return 1
	case len(b) == 0:
		return -1
	}
	return bytes.Compare(a, b)
}

// span is the interval key and end name; point intervals are [key, key+"\x00").
func span(key, end []byte) interval {
	switch {
	case len(end) == 0:
		return interval{key, append(slices.Clip(key), 0)}
	case isOpenEnded(end):
		return interval{key, nil}
	}
	return interval{key, end}
}

func (a interval) overlaps(b interval) bool {
	return compareBound(a.begin, b.end) < 0 && compareBound(b.begin, a.end) < 0
}

// covered reports whether u's permissions of typ cover key..end: for a key
// alone, one holds it; for a range, the ones overlapping it join without a
// gap from at or below its start to at or above its end.
func (s *State) covered(u *authpb.User, key, end []byte, typ authpb.Permission_Type) bool {
	q := span(key, end)
	var over []interval
	for _, name := range u.Roles {
		r := s.roles[name]
		if r == nil {
			continue
		}
		for _, p := range r.KeyPermission {
			if p.PermType != authpb.Permission_READWRITE && p.PermType != typ {
				continue
			}
			if iv := span(p.Key, p.RangeEnd); iv.overlaps(q) {
				over = append(over, iv)
			}
		}
	}
	if len(over) == 0 {
		return false
	}
	if len(end) == 0 {
		return true
	}
	slices.SortFunc(over, func(a, b interval) int { return compareBound(a.begin, b.begin) })
	reach := over[0].end
	for _, iv := range over[1:] {
		if compareBound(reach, iv.begin) < 0 {
			return false
		}
		if compareBound(iv.end, reach) > 0 {
			reach = iv.end
		}
	}
	return compareBound(over[0].begin, q.begin) <= 0 && compareBound(reach, q.end) >= 0
}
