package compat

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/cairn-kv/cairn/node"
)

// TestAuthJWT: with --auth-token jwt (RSA and ECDSA keys the test makes)
// Cairn answers as etcd configured the same way: logins, guarded calls,
// an invalid token, a token issued before a revoke (ErrAuthOldRevision)
// and a wrong password give the same answers; and a token either server
// signed is accepted by the other, as both verify etcd's claims with the
// key alone (no per-member state).
func TestAuthJWT(t *testing.T) {
	for _, method := range []string{"RS256", "ES256"} {
		t.Run(method, func(t *testing.T) {
			opt := jwtKeys(t, method)
			etcd := startEtcdWith(t, "etcd", func(c *embed.Config) { c.BcryptCost = authBcryptCost; c.AuthToken = opt })
			cairn := startCairnWith(t, "cairn", func(c *node.Config) { c.BcryptCost = authBcryptCost; c.AuthToken = opt })
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			etcdSteps, etcdTok := jwtScenario(ctx, t, etcd)
			cairnSteps, cairnTok := jwtScenario(ctx, t, cairn)
			for i := range etcdSteps {
				if etcdSteps[i] != cairnSteps[i] {
					t.Errorf("step %d: etcd %s, cairn %s", i, etcdSteps[i], cairnSteps[i])
				}
			}
			// Each server's root token, at the same auth revision, on the
			// other server.
			for _, c := range []struct {
				name string
				s    *server
				tok  string
			}{{"etcd's token on cairn", cairn, etcdTok}, {"cairn's token on etcd", etcd, cairnTok}} {
				if _, err := c.s.cli.KV.Get(withToken(ctx, c.tok), "k"); err != nil {
					t.Errorf("%s: %v", c.name, err)
				}
			}
		})
	}
}

// jwtKeys writes a key pair for method and returns etcd's --auth-token.
func jwtKeys(t *testing.T, method string) string {
	dir := t.TempDir()
	var (
		privDER []byte
		pubDER  []byte
		kind    string
		err     error
	)
	switch method {
	case "RS256":
		k, _ := rsa.GenerateKey(rand.Reader, 2048)
		privDER, kind = x509.MarshalPKCS1PrivateKey(k), "RSA PRIVATE KEY"
		pubDER, err = x509.MarshalPKIXPublicKey(&k.PublicKey)
	case "ES256":
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		privDER, err = x509.MarshalECPrivateKey(k)
		kind = "EC PRIVATE KEY"
		if err == nil {
			pubDER, err = x509.MarshalPKIXPublicKey(&k.PublicKey)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	priv, pub := filepath.Join(dir, "priv.pem"), filepath.Join(dir, "pub.pem")
	for path, b := range map[string]*pem.Block{priv: {Type: kind, Bytes: privDER}, pub: {Type: "PUBLIC KEY", Bytes: pubDER}} {
		if err := os.WriteFile(path, pem.EncodeToMemory(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return fmt.Sprintf("jwt,pub-key=%s,priv-key=%s,sign-method=%s,ttl=10m", pub, priv, method)
}

func withToken(ctx context.Context, tok string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, rpctypes.TokenFieldNameGRPC, tok)
}

// jwtScenario runs the same calls against s and returns their answers
// (errors as etcd's) and a root token issued at the end.
func jwtScenario(ctx context.Context, t *testing.T, s *server) ([]string, string) {
	c := s.cli
	var out []string
	note := func(what string, err error) {
		out = append(out, fmt.Sprintf("%s: %v", what, err))
	}
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
	}
	must(c.UserAdd(ctx, "root", "rootpw"))
	must(c.UserGrantRole(ctx, "root", "root"))
	must(c.UserAdd(ctx, "alice", "alicepw"))
	must(c.RoleAdd(ctx, "r"))
	must(c.RoleGrantPermission(ctx, "r", "a", clientv3.GetPrefixRangeEnd("a"), clientv3.PermissionType(clientv3.PermReadWrite)))
	must(c.UserGrantRole(ctx, "alice", "r"))
	must(c.AuthEnable(ctx))
	login := func(user, pw string) (*clientv3.Client, error) {
		return clientv3.New(clientv3.Config{Endpoints: []string{s.endpoint}, Username: user, Password: pw, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	}
	_, err := login("alice", "wrong")
	note("wrong password", err)
	alice, err := login("alice", "alicepw")
	if err != nil {
		t.Fatalf("%s: alice: %v", s.name, err)
	}
	defer alice.Close()
	_, err = alice.Put(ctx, "a1", "x")
	note("alice put", err)
	_, err = alice.Get(ctx, "z")
	note("alice get outside", err)
	// Raw calls with tokens, on a connection without clientv3's
	// interceptors: its retry interceptor retries a call whose token was
	// refused for seconds (re-authenticating, which c cannot), and only
	// the refusal is under test. Errors read as clientv3 gives them.
	ar, err := c.Authenticate(ctx, "alice", "alicepw")
	if err != nil {
		t.Fatalf("%s: authenticate: %v", s.name, err)
	}
	conn, err := grpc.NewClient(strings.TrimPrefix(s.endpoint, "http://"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("%s: %v", s.name, err)
	}
	defer conn.Close()
	rawPut := func(tok string) error {
		_, err := pb.NewKVClient(conn).Put(withToken(ctx, tok), &pb.PutRequest{Key: []byte("a2"), Value: []byte("x")})
		return rpctypes.Error(err)
	}
	note("raw token put", rawPut(ar.Token))
	note("invalid token put", rawPut(ar.Token+"x"))
	rootCli, err := login("root", "rootpw")
	if err != nil {
		t.Fatalf("%s: root: %v", s.name, err)
	}
	defer rootCli.Close()
	must(rootCli.RoleRevokePermission(ctx, "r", "a", clientv3.GetPrefixRangeEnd("a")))
	note("token from before the revoke", rawPut(ar.Token))
	_, err = alice.Put(ctx, "a3", "x")
	note("alice put after the revoke", err)
	st, err := rootCli.AuthStatus(ctx)
	if err != nil {
		t.Fatalf("%s: auth status: %v", s.name, err)
	}
	note(fmt.Sprintf("auth revision %d", st.AuthRevision), nil)
	rr, err := c.Authenticate(ctx, "root", "rootpw")
	if err != nil {
		t.Fatalf("%s: authenticate root: %v", s.name, err)
	}
	return out, rr.Token
}
