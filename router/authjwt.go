package router

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// JWT tokens (etcd's --auth-token jwt,...): a token is signed claims of a
// user name ("username"), the auth revision it was issued at ("revision")
// and an expiry ("exp"), so any member holding the public key verifies it
// with no state of its own. A token issued before any later auth change
// answers etcd's ErrAuthOldRevision (clientv3 then authenticates again).

// DefaultJWTTTL is how long a JWT token lives when ttl is not given, as
// etcd's.
const DefaultJWTTTL = 5 * time.Minute

// JWT signs and verifies etcd's JWT tokens.
type JWT struct {
	method jwt.SigningMethod
	// sign is the private key (nil: this member only verifies, as etcd's
	// with a public key alone); verify the key checking a signature.
	sign, verify any
	ttl          time.Duration
}

// Errors of the JWT token options, as etcd's auth package words them.
var (
	ErrInvalidAuthOpts   = errors.New("router: invalid auth options")
	ErrInvalidAuthMethod = errors.New("router: invalid auth signature method")
	ErrMissingKey        = errors.New("router: missing key data")
	ErrKeyMismatch       = errors.New("router: public and private keys don't match")
	ErrVerifyOnly        = errors.New("router: token signing attempted with verify-only key")
)

// ParseAuthToken reads etcd's --auth-token: "" or "simple" (nil: simple
// tokens) or "jwt,sign-method=…,pub-key=FILE,priv-key=FILE,ttl=DURATION",
// reading the key files. sign-method is one of golang-jwt's (RS256,
// PS256, ES256, EdDSA, HS256, …); HMAC takes priv-key alone, the others a
// private key, a public key or both (which must match).
func ParseAuthToken(opt string) (*JWT, error) {
	parts := strings.Split(opt, ",")
	opts := map[string]string{}
	for _, p := range parts[1:] {
		k, v, ok := strings.Cut(p, "=")
		if !ok || strings.Contains(v, "=") {
			return nil, fmt.Errorf("%w: %q", ErrInvalidAuthOpts, p)
		}
		if _, dup := opts[k]; dup {
			return nil, fmt.Errorf("%w: %q given twice", ErrInvalidAuthOpts, k)
		}
		opts[k] = v
	}
	switch parts[0] {
	case "", "simple":
		return nil, nil
	case "jwt":
	default:
		return nil, fmt.Errorf("%w: unknown token type %q", ErrInvalidAuthOpts, parts[0])
	}
	j := &JWT{ttl: DefaultJWTTTL, method: jwt.GetSigningMethod(opts["sign-method"])}
	if ttl := opts["ttl"]; ttl != "" {
		d, err := time.ParseDuration(ttl)
		if err != nil {
			return nil, fmt.Errorf("%w: ttl: %v", ErrInvalidAuthOpts, err)
		}
		j.ttl = d
	}
	if j.method == nil {
		return nil, fmt.Errorf("%w: %q", ErrInvalidAuthMethod, opts["sign-method"])
	}
	var pub, priv []byte
	for name, into := range map[string]*[]byte{"pub-key": &pub, "priv-key": &priv} {
		if f := opts[name]; f != "" {
			data, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("router: --auth-token %s: %w", name, err)
			}
			*into = data
		}
	}
	if err := j.keys(pub, priv); err != nil {
		return nil, err
	}
	return j, nil
}

// keys sets the signing and verifying keys from the PEM files' contents.
func (j *JWT) keys(pub, priv []byte) error {
	if _, ok := j.method.(*jwt.SigningMethodHMAC); ok {
		if len(priv) == 0 {
			return ErrMissingKey
		}
		j.sign, j.verify = priv, priv
		return nil
	}
	var parsePriv func([]byte) (crypto.Signer, error)
	var parsePub func([]byte) (crypto.PublicKey, error)
	switch j.method.(type) {
	case *jwt.SigningMethodRSA, *jwt.SigningMethodRSAPSS:
		parsePriv = func(b []byte) (crypto.Signer, error) { return jwt.ParseRSAPrivateKeyFromPEM(b) }
		parsePub = func(b []byte) (crypto.PublicKey, error) { return jwt.ParseRSAPublicKeyFromPEM(b) }
	case *jwt.SigningMethodECDSA:
		parsePriv = func(b []byte) (crypto.Signer, error) { return jwt.ParseECPrivateKeyFromPEM(b) }
		parsePub = func(b []byte) (crypto.PublicKey, error) { return jwt.ParseECPublicKeyFromPEM(b) }
	case *jwt.SigningMethodEd25519:
		parsePriv = func(b []byte) (crypto.Signer, error) {
			k, err := jwt.ParseEdPrivateKeyFromPEM(b)
			if err != nil {
				return nil, err
			}
			return k.(crypto.Signer), nil
		}
		parsePub = jwt.ParseEdPublicKeyFromPEM
	default:
		return fmt.Errorf("%w: %s", ErrInvalidAuthMethod, j.method.Alg())
	}
	if len(pub) == 0 && len(priv) == 0 {
		return ErrMissingKey
	}
	if len(pub) > 0 {
		k, err := parsePub(pub)
		if err != nil {
			return fmt.Errorf("router: --auth-token pub-key: %w", err)
		}
		j.verify = k
	}
	if len(priv) > 0 {
		k, err := parsePriv(priv)
		if err != nil {
			return fmt.Errorf("router: --auth-token priv-key: %w", err)
		}
		j.sign = k
		if j.verify == nil {
			j.verify = k.Public()
		} else if !samePublic(j.verify, k.Public()) {
			return ErrKeyMismatch
		}
	}
	return nil
}

func samePublic(a, b crypto.PublicKey) bool {
	switch a := a.(type) {
	case *rsa.PublicKey:
		return a.Equal(b)
	case *ecdsa.PublicKey:
		return a.Equal(b)
	case ed25519.PublicKey:
		bb, ok := b.(ed25519.PublicKey)
		return ok && bytes.Equal(a, bb)
	}
	return false
}

// issue signs a token for user at auth revision rev, expiring ttl after
// now.
func (j *JWT) issue(user string, rev uint64, now time.Time) (string, error) {
	if j.sign == nil {
		return "", ErrVerifyOnly
	}
	return jwt.NewWithClaims(j.method, jwt.MapClaims{
		"username": user,
		"revision": rev,
		"exp":      now.Add(j.ttl).Unix(),
	}).SignedString(j.sign)
}

// user returns the user and auth revision tok was issued for, or false if
// it is not a valid, unexpired token signed with this key and method.
func (j *JWT) user(tok string) (string, uint64, bool) {
	parsed, err := jwt.Parse(tok, func(t *jwt.Token) (any, error) {
		if t.Method.Alg() != j.method.Alg() {
			return nil, fmt.Errorf("router: token signed with %s, want %s", t.Method.Alg(), j.method.Alg())
		}
		return j.verify, nil
	})
	if err != nil || !parsed.Valid {
		return "", 0, false
	}
	claims, ok := parsed.Claims.(jwt.MapClaims)
	if !ok {
		return "", 0, false
	}
	user, ok1 := claims["username"].(string)
	rev, ok2 := claims["revision"].(float64)
	if !ok1 || !ok2 {
		return "", 0, false
	}
	return user, uint64(rev), true
}
