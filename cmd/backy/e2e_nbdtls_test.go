package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// e2eNBDTLSCert writes a self-signed certificate for 127.0.0.1 and its key
// into dir (cert.pem, key.pem) and the certificate as the CA of a libnbd
// certificate directory (dir/pki/ca-cert.pem).
func e2eNBDTLSCert(t *testing.T, dir string) (cert, key, pki string) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	cert, key, pki = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"), filepath.Join(dir, "pki")
	e2eWriteFile(t, cert, certPEM)
	e2eWriteFile(t, key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}))
	if err := os.Chmod(key, 0o600); err != nil {
		t.Fatal(err)
	}
	e2eWriteFile(t, filepath.Join(pki, "ca-cert.pem"), certPEM)
	return cert, key, pki
}

// TestE2ENBDServeTLS: with a certificate and tls = required in [NBD],
// real clients read over TLS (nbds://) and plain clients are refused.
func TestE2ENBDServeTLS(t *testing.T) {
	e2eNBDTool(t, "nbdinfo")
	e2eNBDTool(t, "nbdcopy")
	t.Parallel()
	b := e2eNewBox(t)
	img := b.path("disk.img")
	e2eRandomFile(t, img, 6*e2eMiB+99, 61)
	v := b.backup(img, "vm-6")
	cert, key, pki := e2eNBDTLSCert(t, b.path("tls"))
	addr := e2eNBDServeFreeAddr(t)
	cfg := b.path("tls.cfg")
	e2eWriteFile(t, cfg, []byte(fmt.Sprintf("[MetaBackend]\npath = %s\n[DataBackend]\npath = %s\n[NBD]\nlisten = %s\ntls_cert = %s\ntls_key = %s\ntls = required\n",
		filepath.Join(b.home, "backy.db"), b.dataDir(), addr, cert, key)))
	p := b.start("-c", cfg, "nbd", "--read-only")
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		if p.exited() || time.Now().After(deadline) {
			t.Fatalf("backy nbd did not listen on %s:\n%v", addr, p.wait(t))
		}
		time.Sleep(20 * time.Millisecond)
	}
	tlsURI := "nbds://" + addr + "/" + v.UID + "?tls-certificates=" + pki
	r := e2eNBDExec(t, "nbdinfo", "--no-content", tlsURI)
	if r.err != nil || !strings.Contains(r.stdout, "with TLS") {
		t.Errorf("nbdinfo over TLS:\n%v", r)
	}
	out := filepath.Join(t.TempDir(), "copy.img")
	e2eNBDCopy(t, tlsURI, out)
	e2eSameFile(t, out, img)
	// TLS is required: a plain client gets nothing.
	if r := e2eNBDExec(t, "nbdinfo", "--no-content", e2eNBDURI(addr, v.UID)); r.err == nil {
		t.Errorf("a client without TLS was served:\n%v", r)
	}
	res := e2eNBDServeStop(t, p)
	if !strings.Contains(res.stderr, "nbds://") || !strings.Contains(res.stderr, "TLS required") {
		t.Errorf("the server should say it requires TLS:\n%v", res)
	}
}
