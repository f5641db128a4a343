package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// security is how a system's clients reach it.
type security int

const (
	// secNone: plain http, no auth.
	secNone security = iota
	// secTLS: client URLs are https with a certificate of a CA the harness
	// makes for the run, and the server requires and verifies a client
	// certificate (--client-cert-auth); the benchmark tool and the
	// harness's own clients present one (--cacert, --cert, --key).
	secTLS
	// secAuth: plain http with etcd's auth enabled once the system is up;
	// every client logs in as benchUser, a user that is not root (root
	// skips the permission check), whose role may read and write every key.
	secAuth
)

// The auth systems' users: root only turns auth on; the clients are
// benchUser (the benchmark tool's --user).
const (
	rootPassword  = "bench-root"
	benchUser     = "bench"
	benchPassword = "bench-pw"
)

// certFiles are the files of a secTLS system: the CA the server trusts
// for client certificates, the server's certificate (127.0.0.1) and the
// clients' certificate.
type certFiles struct {
	ca, serverCert, serverKey, clientCert, clientKey string
}

// makeCerts writes a fresh CA and a server and a client certificate it
// signed (ECDSA P-256, valid for a day) under dir.
func makeCerts(dir string) (*certFiles, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "bench CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	f := &certFiles{ca: filepath.Join(dir, "ca.pem")}
	if err := writePEM(f.ca, "CERTIFICATE", caDER); err != nil {
		return nil, err
	}
	issue := func(serial int64, cn, certFile, keyFile string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(certFile, "CERTIFICATE", der); err != nil {
			return err
		}
		return writePEM(keyFile, "EC PRIVATE KEY", kb)
	}
	f.serverCert, f.serverKey = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	f.clientCert, f.clientKey = filepath.Join(dir, "client.pem"), filepath.Join(dir, "client-key.pem")
	if err := issue(2, "bench server", f.serverCert, f.serverKey); err != nil {
		return nil, err
	}
	if err := issue(3, "bench client", f.clientCert, f.clientKey); err != nil {
		return nil, err
	}
	return f, nil
}

func writePEM(path, kind string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600)
}

// etcdTLSArgs are serve-etcd's flags serving f on the client URL.
func etcdTLSArgs(f *certFiles) []string {
	if f == nil {
		return nil
	}
	return []string{"-cert-file", f.serverCert, "-key-file", f.serverKey, "-trusted-ca-file", f.ca, "-client-cert-auth"}
}

// cairnTLSArgs are cmd/cairn's flags (etcd's) serving f on the client URL.
func cairnTLSArgs(f *certFiles) []string {
	if f == nil {
		return nil
	}
	return []string{"--cert-file", f.serverCert, "--key-file", f.serverKey, "--trusted-ca-file", f.ca, "--client-cert-auth"}
}

// clientConfig is the configuration of a client of in: its endpoints, the
// client certificate of a secTLS system, the user of a secAuth system
// once auth is on.
func (in *instance) clientConfig() (clientv3.Config, error) {
	cfg := clientv3.Config{Endpoints: in.endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	if in.certs != nil {
		c, err := in.tlsConfig()
		if err != nil {
			return cfg, err
		}
		cfg.TLS = c
	}
	if in.authOn {
		cfg.Username, cfg.Password = benchUser, benchPassword
	}
	return cfg, nil
}

func (in *instance) tlsConfig() (*tls.Config, error) {
	info := transport.TLSInfo{CertFile: in.certs.clientCert, KeyFile: in.certs.clientKey, TrustedCAFile: in.certs.ca}
	return info.ClientConfig()
}

// newClient is a client of in (see clientConfig), changed by edit (nil:
// none).
func (in *instance) newClient(edit func(*clientv3.Config)) (*clientv3.Client, error) {
	cfg, err := in.clientConfig()
	if err != nil {
		return nil, err
	}
	if edit != nil {
		edit(&cfg)
	}
	return clientv3.New(cfg)
}

// benchFlags are the benchmark tool's flags reaching in as its clients do:
// --cacert, --cert and --key for a secTLS system, --user for a secAuth
// one.
func (in *instance) benchFlags() []string {
	var f []string
	if in.certs != nil {
		f = append(f, "--cacert", in.certs.ca, "--cert", in.certs.clientCert, "--key", in.certs.clientKey)
	}
	if in.authOn {
		f = append(f, "--user", benchUser+":"+benchPassword)
	}
	return f
}

// enableAuth turns etcd's auth on in a running secAuth system, as an
// operator would with etcdctl: user root with role root, a role that may
// read and write every key (from key "\x00" on), benchUser with that
// role, then auth enable.
func (in *instance) enableAuth(ctx context.Context) error {
	cli, err := in.newClient(nil)
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	steps := []struct {
		what string
		do   func() error
	}{
		{"user add root", func() error { _, err := cli.UserAdd(ctx, "root", rootPassword); return err }},
		{"user grant-role root root", func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err }},
		{"role add " + benchUser, func() error { _, err := cli.RoleAdd(ctx, benchUser); return err }},
		{"role grant-permission", func() error {
			_, err := cli.RoleGrantPermission(ctx, benchUser, "\x00", "\x00", clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		}},
		{"user add " + benchUser, func() error { _, err := cli.UserAdd(ctx, benchUser, benchPassword); return err }},
		{"user grant-role", func() error { _, err := cli.UserGrantRole(ctx, benchUser, benchUser); return err }},
		{"auth enable", func() error { _, err := cli.AuthEnable(ctx); return err }},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("bench: %s: %s: %w", in.sys.name, s.what, err)
		}
	}
	in.authOn = true
	// The user's first request, so a system that would refuse it fails
	// here rather than in the benchmark.
	ucli, err := in.newClient(nil)
	if err != nil {
		return fmt.Errorf("bench: %s: log in as %s: %w", in.sys.name, benchUser, err)
	}
	defer ucli.Close()
	if _, err := ucli.Put(ctx, "bench-auth-probe", "x"); err != nil {
		return fmt.Errorf("bench: %s: put as %s: %w", in.sys.name, benchUser, err)
	}
	return nil
}
