package nodetest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// CA is a certificate authority a test makes, for members and clients
// serving and dialing TLS: an ECDSA P-256 key and a self-signed
// certificate valid from an hour ago for a day. It writes its certificate
// and every certificate it issues, as PEM files, into a temporary
// directory of the test that made it, removed when the test ends.
//
// A CA belongs to the test's goroutine (Issue is not safe for concurrent
// use).
type CA struct {
	// CAFile is the CA's certificate, PEM: the file members and clients
	// trust (TrustedCAFile, etcdctl's --cacert).
	CAFile string

	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// serial is the serial number of the last certificate made (the CA's
	// own is 1). Invariant: every certificate of the CA has its own serial.
	serial int64
}

// NewCA makes a CA whose common name is name+" CA", its certificate in
// <dir>/<name>-ca.pem. It fails tb if a key or certificate cannot be made
// or written.
func NewCA(tb testing.TB, name string) *CA {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	ca := &CA{dir: tb.TempDir(), cert: cert, key: key, serial: 1}
	ca.CAFile = filepath.Join(ca.dir, name+"-ca.pem")
	writePEM(tb, ca.CAFile, "CERTIFICATE", der)
	return ca
}

// Issue makes a certificate signed by the CA for common name cn (the name
// a member's --peer-cert-allowed-cn or auth's common-name user checks),
// usable both as a server certificate for 127.0.0.1 and localhost and as a
// client certificate, with a new ECDSA P-256 key. It returns the files of
// the certificate and of its key (PEM, "EC PRIVATE KEY"); each call makes
// new files, so a name may be issued more than once. It fails tb if the
// certificate cannot be made or written.
func (ca *CA) Issue(tb testing.TB, cn string) (certFile, keyFile string) {
	tb.Helper()
	return ca.IssueFor(tb, cn, "127.0.0.1", "localhost")
}

// IssueFor is Issue for a certificate valid for hosts only (what
// --peer-cert-allowed-hostname checks): each an IP address if it parses
// as one, else a DNS name. With no hosts the certificate is valid for no
// host at all (a client certificate).
func (ca *CA) IssueFor(tb testing.TB, cn string, hosts ...string) (certFile, keyFile string) {
	tb.Helper()
	var ips []net.IP
	var names []string
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
		} else {
			names = append(names, h)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	ca.serial++
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(ca.serial), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: ips, DNSNames: names}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		tb.Fatal(err)
	}
	name := strings.ReplaceAll(cn, " ", "-") + "-" + big.NewInt(ca.serial).String()
	certFile, keyFile = filepath.Join(ca.dir, name+".pem"), filepath.Join(ca.dir, name+"-key.pem")
	writePEM(tb, certFile, "CERTIFICATE", der)
	writePEM(tb, keyFile, "EC PRIVATE KEY", kb)
	return certFile, keyFile
}

// Revoke writes a certificate revocation list of the CA revoking the
// certificates in certFiles (files Issue made) and returns its file, DER
// as etcd reads --client-crl-file and --peer-crl-file (not PEM). It fails tb if a
// certificate cannot be read or the list cannot be made or written.
func (ca *CA) Revoke(tb testing.TB, certFiles ...string) string {
	tb.Helper()
	var revoked []x509.RevocationListEntry
	for _, f := range certFiles {
		raw, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		b, _ := pem.Decode(raw)
		if b == nil {
			tb.Fatalf("nodetest: %s holds no PEM certificate", f)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			tb.Fatal(err)
		}
		revoked = append(revoked, x509.RevocationListEntry{SerialNumber: c.SerialNumber, RevocationTime: time.Now().Add(-time.Minute)})
	}
	ca.serial++
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(ca.serial),
		ThisUpdate: time.Now().Add(-time.Hour), NextUpdate: time.Now().Add(24 * time.Hour),
		RevokedCertificateEntries: revoked}, ca.cert, ca.key)
	if err != nil {
		tb.Fatal(err)
	}
	path := filepath.Join(ca.dir, "revoked-"+big.NewInt(ca.serial).String()+".crl")
	if err := os.WriteFile(path, der, 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// Pool is a certificate pool holding only the CA's certificate, for a
// client's tls.Config RootCAs.
func (ca *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	return pool
}

// writePEM writes der as one PEM block of type kind to path, readable by
// its owner only, failing tb if it cannot.
func writePEM(tb testing.TB, path, kind string, der []byte) {
	tb.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
}
