package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backy/backy/internal/unprivileged"
)

// testCert is a certificate made by newTestCert, in PEM.
type testCert struct {
	certPEM, keyPEM string
	cert            *x509.Certificate
	key             *ecdsa.PrivateKey
}

// newTestCert makes an ECDSA P-256 certificate for "localhost" and
// 127.0.0.1 valid from notBefore to notAfter, signed by parent (self-signed
// if nil); isCA makes it a CA certificate.
func newTestCert(cn string, notBefore, notAfter time.Time, isCA bool, parent *testCert) (*testCert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	if isCA {
		tmpl.IsCA = true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
		tmpl.DNSNames, tmpl.IPAddresses, tmpl.ExtKeyUsage = nil, nil, nil
	}
	signer, signerKey := tmpl, key
	if parent != nil {
		signer, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signerKey)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &testCert{
		certPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		keyPEM:  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
		cert:    cert,
		key:     key,
	}, nil
}

// nbdCerts are the certificates of the nbd tests, made once.
type nbdCerts struct {
	server, other, expired, ca, client, ca2 *testCert
}

var testNBDCerts = sync.OnceValue(func() *nbdCerts {
	now := time.Now()
	from, to := now.Add(-time.Hour), now.Add(24*time.Hour)
	must := func(c *testCert, err error) *testCert {
		if err != nil {
			panic(err)
		}
		return c
	}
	ca := must(newTestCert("backy test client CA", from, to, true, nil))
	return &nbdCerts{
		server:  must(newTestCert("backy-nbd", from, to, false, nil)),
		other:   must(newTestCert("other", from, to, false, nil)),
		expired: must(newTestCert("expired", time.Date(2019, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(2020, 1, 2, 3, 4, 5, 0, time.UTC), false, nil)),
		ca:      ca,
		client:  must(newTestCert("client", from, to, false, ca)),
		ca2:     must(newTestCert("backy test client CA 2", from, to, true, nil)),
	}
})

// nbdFilesByBase returns the fake PEM files of the nbd tests by base
// name. The names do not start with the prefixes fuzzSecretFiles gives a
// meaning to (key, wkey, pass, bad).
func nbdFilesByBase() map[string]fakeFile {
	c := testNBDCerts()
	return map[string]fakeFile{
		"nbd.crt":              {c.server.certPEM, 0o644},
		"nbd.key":              {c.server.keyPEM, 0o600},
		"nbd-0400.key":         {c.server.keyPEM, 0o400},
		"nbd-0640.key":         {c.server.keyPEM, 0o640},
		"nbd-0644.key":         {c.server.keyPEM, 0o644},
		"nbd-bundle.pem":       {c.server.keyPEM + c.server.certPEM, 0o600},
		"nbd-chain.crt":        {c.server.certPEM + c.ca.certPEM, 0o644},
		"other.key":            {c.other.keyPEM, 0o600},
		"expired.crt":          {c.expired.certPEM, 0o644},
		"expired.key":          {c.expired.keyPEM, 0o600},
		"encrypted.key":        {"-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n", 0o600},
		"legacy-encrypted.key": {"-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00000000000000000000000000000000\n\nAAAA\n-----END EC PRIVATE KEY-----\n", 0o600},
		"broken.key":           {"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", 0o600},
		"broken.crt":           {"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", 0o644},
		"empty.pem":            {"", 0o644},
		"garbage.pem":          {"not PEM at all\n", 0o644},
		"big.pem":              {strings.Repeat("x", maxPEMFileSize+1), 0o644},
		"clients.pem":          {c.ca.certPEM, 0o644},
		"clients2.pem":         {"# two CAs\n" + c.ca2.certPEM + c.ca.certPEM, 0o644},
		"clients-key.pem":      {c.ca.certPEM + c.ca.keyPEM, 0o644},
		"clients-trailing.pem": {c.ca.certPEM + "garbage\n", 0o644},
	}
}

// nbdDir is where the fake PEM files are, also under nbdDir/tls.
var nbdDir = configDir

// nbdPath returns the fake file base in nbdDir.
func nbdPath(base string) string { return filepath.Join(nbdDir, base) }

// nbdFiles fakes the PEM files of the nbd tests.
func nbdFiles(t testing.TB) {
	t.Helper()
	files := map[string]fakeFile{}
	for base, f := range nbdFilesByBase() {
		files[nbdPath(base)] = f
		files[filepath.Join(nbdDir, "tls", base)] = f
	}
	fakeSecretFiles(t, files)
}

// nbdInput returns a complete file whose [NBD] section holds the lines of
// in, the first on line 6.
func nbdInput(in string) string { return required + "[NBD]\n" + in }

// Lines of [NBD] for the fake files.
var (
	nbdPair = "tls_cert = " + nbdPath("nbd.crt") + "\ntls_key = " + nbdPath("nbd.key") + "\n"
	nbdCA   = "tls_client_ca = " + nbdPath("clients.pem") + "\n"
)

// nbdWant returns the NBD of nbdPair with mode tls.
func nbdWant(tls string) NBD {
	return NBD{Listen: "127.0.0.1:10809", TLSCert: nbdPath("nbd.crt"), TLSKey: nbdPath("nbd.key"), TLS: tls}
}

var nbdValidTests = []struct {
	name string
	in   string // the lines of [NBD]
	want NBD
}{
	{"empty section", "", NBD{Listen: "127.0.0.1:10809", TLS: "off"}},
	{"listen default", "listen = 127.0.0.1:10809\n", NBD{Listen: "127.0.0.1:10809", TLS: "off"}},
	{"listen every address", "listen = :10809\n", NBD{Listen: ":10809", TLS: "off"}},
	{"listen 0.0.0.0", "listen = 0.0.0.0:1\n", NBD{Listen: "0.0.0.0:1", TLS: "off"}},
	{"listen IPv6", "listen = [::1]:65535\n", NBD{Listen: "[::1]:65535", TLS: "off"}},
	{"listen IPv6 any", "listen: [::]:10809\n", NBD{Listen: "[::]:10809", TLS: "off"}},
	{"listen IPv6 zone", "listen = [fe80::1%eth0]:10809\n", NBD{Listen: "[fe80::1%eth0]:10809", TLS: "off"}},
	{"listen host name", "listen = backup-1.example.com:10809\n", NBD{Listen: "backup-1.example.com:10809", TLS: "off"}},
	{"listen localhost", "LISTEN = localhost:10810\n", NBD{Listen: "localhost:10810", TLS: "off"}},
	{"listen port leading zeros", "listen = 127.0.0.1:010809\n", NBD{Listen: "127.0.0.1:10809", TLS: "off"}},
	{"tls off", "tls = off\n", NBD{Listen: "127.0.0.1:10809", TLS: "off"}},
	{"certificate", nbdPair, nbdWant("optional")},
	{"certificate optional", nbdPair + "tls = optional\n", nbdWant("optional")},
	{"certificate required", "tls = required\n" + nbdPair, nbdWant("required")},
	{"certificate off", nbdPair + "tls = off\n", nbdWant("off")},
	{"key before certificate", "tls_key = " + nbdPath("nbd.key") + "\ntls_cert = " + nbdPath("nbd.crt") + "\n", nbdWant("optional")},
	{"upper-case keys", "TLS_CERT = " + nbdPath("nbd.crt") + "\nTls_Key = " + nbdPath("nbd.key") + "\nTLS = required\n", nbdWant("required")},
	{"key 0400", "tls_cert = " + nbdPath("nbd.crt") + "\ntls_key = " + nbdPath("nbd-0400.key") + "\n", func() NBD {
		n := nbdWant("optional")
		n.TLSKey = nbdPath("nbd-0400.key")
		return n
	}()},
	{"bundle", "tls_cert = " + nbdPath("nbd-bundle.pem") + "\ntls_key = " + nbdPath("nbd-bundle.pem") + "\n",
		NBD{Listen: "127.0.0.1:10809", TLSCert: nbdPath("nbd-bundle.pem"), TLSKey: nbdPath("nbd-bundle.pem"), TLS: "optional"}},
	{"chain", "tls_cert = " + nbdPath("nbd-chain.crt") + "\ntls_key = " + nbdPath("nbd.key") + "\n", func() NBD {
		n := nbdWant("optional")
		n.TLSCert = nbdPath("nbd-chain.crt")
		return n
	}()},
	{"client CA", nbdPair + nbdCA, func() NBD {
		n := nbdWant("required")
		n.TLSClientCA = nbdPath("clients.pem")
		return n
	}()},
	{"client CA required", nbdCA + "tls = required\n" + nbdPair, func() NBD {
		n := nbdWant("required")
		n.TLSClientCA = nbdPath("clients.pem")
		return n
	}()},
	{"two client CAs", nbdPair + "tls_client_ca = " + nbdPath("clients2.pem") + "\n", func() NBD {
		n := nbdWant("required")
		n.TLSClientCA = nbdPath("clients2.pem")
		return n
	}()},
	{"relative paths", "tls_cert = tls/nbd.crt\ntls_key = ./tls/../tls//nbd.key\ntls_client_ca = ../backy/tls/clients.pem\nlisten = [::1]:10809\n", NBD{
		Listen:      "[::1]:10809",
		TLSCert:     filepath.Join(configDir, "tls", "nbd.crt"),
		TLSKey:      filepath.Join(configDir, "tls", "nbd.key"),
		TLSClientCA: filepath.Join(configDir, "tls", "clients.pem"),
		TLS:         "required",
	}},
}

func TestNBDDefaults(t *testing.T) {
	for _, in := range []string{required, nbdInput(""), "[NBD]\n" + required} {
		c, err := Parse(testName, []byte(in))
		if err != nil {
			t.Fatal(err)
		}
		if w := (NBD{Listen: "127.0.0.1:10809", TLS: "off"}); c.NBD != w {
			t.Errorf("%q: got %+v, want %+v", in, c.NBD, w)
		}
		tc, err := c.NBD.TLSConfig()
		if tc != nil || err != nil {
			t.Errorf("TLSConfig() = %v, %v; want nil, nil", tc, err)
		}
	}
	if w := (NBD{Listen: "127.0.0.1:10809", TLS: "off"}); Default(t.TempDir()).NBD != w {
		t.Errorf("Default: got %+v, want %+v", Default(t.TempDir()).NBD, w)
	}
	// The zero NBD, of a Config made by hand, has TLS off.
	if tc, err := (NBD{}).TLSConfig(); tc != nil || err != nil {
		t.Errorf("NBD{}.TLSConfig() = %v, %v; want nil, nil", tc, err)
	}
}

func TestNBDValid(t *testing.T) {
	nbdFiles(t)
	for _, tt := range nbdValidTests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(testName, []byte(nbdInput(tt.in)))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			w := want()
			w.NBD = tt.want
			if !reflect.DeepEqual(c, w) {
				t.Errorf("got\n%+v\nwant\n%+v", c.NBD, w.NBD)
			}
			checkParsed(t, c)
			// TLSConfig agrees with the parsed keys.
			tc, err := c.NBD.TLSConfig()
			if err != nil {
				t.Fatalf("TLSConfig: %v", err)
			}
			checkTLSConfig(t, c.NBD, tc)
		})
	}
}

// checkTLSConfig checks that tc is what TLSConfig must return for n.
func checkTLSConfig(t *testing.T, n NBD, tc *tls.Config) {
	t.Helper()
	if n.TLS == "off" {
		if tc != nil {
			t.Errorf("TLS off: TLSConfig() = %v, want nil", tc)
		}
		return
	}
	if tc == nil {
		t.Fatal("TLSConfig() = nil with TLS on")
	}
	if tc.MinVersion != tls.VersionTLS12 || len(tc.Certificates) != 1 || len(tc.Certificates[0].Certificate) == 0 {
		t.Errorf("TLSConfig(): MinVersion %x, %d certificates", tc.MinVersion, len(tc.Certificates))
	}
	if n.TLSClientCA != "" {
		if tc.ClientAuth != tls.RequireAndVerifyClientCert || tc.ClientCAs == nil {
			t.Errorf("TLSConfig(): ClientAuth %v, ClientCAs %v with a client CA", tc.ClientAuth, tc.ClientCAs)
		}
	} else if tc.ClientAuth != tls.NoClientCert || tc.ClientCAs != nil {
		t.Errorf("TLSConfig(): ClientAuth %v, ClientCAs %v without a client CA", tc.ClientAuth, tc.ClientCAs)
	}
}

// nbdErrorTests are complete files, checked like errorTests (the fake PEM
// files of nbdFiles exist).
var nbdErrorTests = []struct {
	name     string
	in       string
	line     int
	key      string
	contains []string
}{
	{"wrong case section", "[nbd]\n" + required, 1, "", []string{"did you mean [NBD]"}},
	{"unknown section lists NBD", "[NBDServer]\n" + required, 1, "", []string{"[DataBackend], [NBD] or [EncryptionN]"}},
	{"duplicate section", nbdInput("[NBD]\n"), 6, "", []string{"duplicate section [NBD]", "line 5"}},
	{"unknown key", nbdInput("tls_ca = /x\n"), 6, "tls_ca", []string{"[NBD] tls_ca: unknown key (expected one of listen, tls_cert, tls_key, tls, tls_client_ca, max_connections, max_connections_per_client, handshake_timeout)"}},
	{"NBD key in DEFAULTS", "[DEFAULTS]\nlisten = :10809\n" + required, 2, "listen", []string{"[DEFAULTS]", "unknown key"}},
	{"duplicate key", nbdInput("listen = :1\nListen = :2\n"), 7, "listen", []string{"duplicate key", "line 6"}},

	// listen
	{"listen empty", nbdInput("listen =\n"), 6, "listen", []string{"[NBD] listen: empty value", "127.0.0.1:10809"}},
	{"listen port only", nbdInput("listen = 10809\n"), 6, "listen", []string{`"10809" is not host:port: missing port in address`, "did you mean 127.0.0.1:10809, or :10809"}},
	{"listen host only", nbdInput("listen = localhost\n"), 6, "listen", []string{`"localhost" is not host:port: missing port in address`, "did you mean localhost:10809?"}},
	{"listen IPv6 no brackets", nbdInput("listen = ::1\n"), 6, "listen", []string{"did you mean [::1]:10809?"}},
	{"listen IPv6 port no brackets", nbdInput("listen = ::1:10809\n"), 6, "listen", []string{"too many colons", "in brackets, e.g. [::1]:10809"}},
	{"listen URL", nbdInput("listen = nbd://127.0.0.1:10809\n"), 6, "listen", []string{"is a URL, not host:port"}},
	{"listen port 0", nbdInput("listen = 127.0.0.1:0\n"), 6, "listen", []string{`port "0" is not a number from 1 to 65535`}},
	{"listen port too big", nbdInput("listen = 127.0.0.1:65536\n"), 6, "listen", []string{`port "65536" is not a number from 1 to 65535`}},
	{"listen port negative", nbdInput("listen = 127.0.0.1:-1\n"), 6, "listen", []string{`port "-1"`}},
	{"listen port plus", nbdInput("listen = 127.0.0.1:+80\n"), 6, "listen", []string{`port "+80"`}},
	{"listen port name", nbdInput("listen = 127.0.0.1:nbd\n"), 6, "listen", []string{`port "nbd"`}},
	{"listen port empty", nbdInput("listen = 127.0.0.1:\n"), 6, "listen", []string{`port ""`}},
	{"listen bad host", nbdInput("listen = a b:10809\n"), 6, "listen", []string{`"a b" is neither an IP address nor a host name`}},
	{"listen inline comment", nbdInput("listen = :10809 # all\n"), 6, "listen", []string{"inline comments are not supported"}},

	// tls
	{"tls on", nbdInput("tls = on\n"), 6, "tls", []string{`"on" is not a valid TLS mode (expected one of off, optional, required)`}},
	{"tls upper case", nbdInput("tls = Required\n"), 6, "tls", []string{`"Required" is not a valid TLS mode`}},
	{"tls empty", nbdInput("tls =\n"), 6, "tls", []string{`"" is not a valid TLS mode`}},
	{"tls required without certificate", nbdInput("listen = :10809\ntls = required\n"), 7, "tls", []string{"tls = required needs a certificate (set tls_cert and tls_key", "or set tls = off"}},
	{"tls optional without certificate", nbdInput("tls = optional\n"), 6, "tls", []string{"tls = optional needs a certificate"}},

	// tls_cert and tls_key
	{"cert empty", nbdInput("tls_cert =\n"), 6, "tls_cert", []string{"empty value (expected the path of a file holding a PEM certificate chain"}},
	{"key empty", nbdInput("tls_key =\n"), 6, "tls_key", []string{"empty value (expected the path of a file holding the PEM private key"}},
	{"cert missing file", nbdInput("tls_cert = /nope/nbd.crt\ntls_key = " + nbdPath("nbd.key") + "\n"), 6, "tls_cert",
		[]string{`cannot read "` + filepath.Clean("/nope/nbd.crt") + `": file does not exist (expected a readable file holding a PEM certificate chain`}},
	{"key missing file", nbdInput("tls_cert = " + nbdPath("nbd.crt") + "\ntls_key = /nope/nbd.key\n"), 7, "tls_key",
		[]string{`cannot read "` + filepath.Clean("/nope/nbd.key") + `": file does not exist (expected a readable file holding the PEM private key`}},
	{"relative missing file", nbdInput("tls_cert = missing.crt\n"), 6, "tls_cert", []string{`cannot read "` + filepath.Join(must(os.Getwd()), "missing.crt") + `"`}},
	{"cert without key", nbdInput("tls_cert = " + nbdPath("nbd.crt") + "\nlisten = :1\n"), 6, "tls_cert", []string{"no private key goes with it (set tls_key", "or remove tls_cert)"}},
	{"key without cert", nbdInput("listen = :1\ntls_key = " + nbdPath("nbd.key") + "\n"), 7, "tls_key", []string{"no certificate goes with it (set tls_cert", "or remove tls_key)"}},
	{"mismatched pair", nbdInput("tls_cert = " + nbdPath("nbd.crt") + "\ntls_key = " + nbdPath("other.key") + "\n"), 7, "tls_key",
		[]string{`cannot use the certificate in "` + nbdPath("nbd.crt") + `" with the private key in "` + nbdPath("other.key") + `": tls: private key does not match public key`}},
	{"mismatched pair key first", nbdInput("tls_key = " + nbdPath("expired.key") + "\ntls_cert = " + nbdPath("nbd.crt") + "\n"), 6, "tls_key",
		[]string{nbdPath("nbd.crt"), nbdPath("expired.key"), "does not match"}},
	{"cert and key swapped", nbdInput("tls_cert = " + nbdPath("nbd.key") + "\ntls_key = " + nbdPath("nbd.crt") + "\n"), 6, "tls_cert", []string{`"` + nbdPath("nbd.key") + `" holds no PEM certificate`, "openssl req -x509"}},
	{"key file holds a certificate", nbdInput("tls_cert = " + nbdPath("nbd.crt") + "\ntls_key = " + nbdPath("nbd.crt") + "\n"), 7, "tls_key", []string{`"` + nbdPath("nbd.crt") + `" holds no PEM private key`}},
	{"cert garbage", nbdInput("tls_cert = " + nbdPath("garbage.pem") + "\n"), 6, "tls_cert", []string{"holds no PEM certificate"}},
	{"cert empty file", nbdInput("tls_cert = " + nbdPath("empty.pem") + "\n"), 6, "tls_cert", []string{"holds no PEM certificate"}},
	{"cert too big", nbdInput("tls_cert = " + nbdPath("big.pem") + "\n"), 6, "tls_cert", []string{"is larger than 1048576 bytes"}},
	{"cert broken", nbdInput("tls_cert = " + nbdPath("broken.crt") + "\n"), 6, "tls_cert", []string{`certificate 1 of "` + nbdPath("broken.crt") + `" does not parse: x509: `}},
	{"key broken", nbdInput("tls_cert = " + nbdPath("nbd.crt") + "\ntls_key = " + nbdPath("broken.key") + "\n"), 7, "tls_key", []string{"cannot use the certificate in", "tls: failed to parse private key"}},
	{"key garbage", nbdInput("tls_key = " + nbdPath("garbage.pem") + "\n"), 6, "tls_key", []string{"holds no PEM private key"}},
	{"key encrypted", nbdInput("tls_key = " + nbdPath("encrypted.key") + "\n"), 6, "tls_key", []string{"is encrypted with a passphrase", "openssl pkey -in " + nbdPath("encrypted.key")}},
	{"key legacy encrypted", nbdInput("tls_key = " + nbdPath("legacy-encrypted.key") + "\n"), 6, "tls_key", []string{"is encrypted with a passphrase"}},

	// tls_client_ca
	{"client CA without certificate", nbdInput(nbdCA), 6, "tls_client_ca", []string{"needs TLS", "set tls_cert and tls_key too, or remove tls_client_ca"}},
	{"client CA with tls off", nbdInput(nbdPair + "tls = off\n" + nbdCA), 9, "tls_client_ca", []string{"has no effect with tls = off (line 8)", "set tls = required"}},
	{"client CA with tls optional", nbdInput(nbdCA + nbdPair + "tls = optional\n"), 9, "tls", []string{"tls = optional lets clients connect without TLS", "tls_client_ca (line 6)", "set tls = required"}},
	{"client CA empty", nbdInput("tls_client_ca =\n"), 6, "tls_client_ca", []string{"empty value (expected the path of a file holding PEM CA certificates"}},
	{"client CA missing", nbdInput("tls_client_ca = /nope/ca.pem\n"), 6, "tls_client_ca", []string{"cannot read", "file does not exist"}},
	{"client CA garbage", nbdInput("tls_client_ca = " + nbdPath("garbage.pem") + "\n"), 6, "tls_client_ca", []string{`"` + nbdPath("garbage.pem") + `" holds no PEM certificate (expected PEM CA certificates`}},
	{"client CA broken", nbdInput("tls_client_ca = " + nbdPath("broken.crt") + "\n"), 6, "tls_client_ca", []string{"certificate 1 of", "does not parse"}},
	{"client CA with a key", nbdInput("tls_client_ca = " + nbdPath("clients-key.pem") + "\n"), 6, "tls_client_ca", []string{`PEM block 2 of "` + nbdPath("clients-key.pem") + `" is a "PRIVATE KEY", not a CERTIFICATE`}},
	{"client CA trailing garbage", nbdInput("tls_client_ca = " + nbdPath("clients-trailing.pem") + "\n"), 6, "tls_client_ca", []string{"holds something other than PEM certificates after certificate 1"}},
}

// must returns v, panicking on error.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestNBDErrors(t *testing.T) {
	nbdFiles(t)
	c := testNBDCerts()
	for _, tt := range nbdErrorTests {
		t.Run(tt.name, func(t *testing.T) {
			msg := checkParseError(t, tt.in, tt.line, tt.key, tt.contains)
			// No part of a private key is ever shown.
			for _, k := range []*testCert{c.server, c.other, c.expired, c.ca} {
				for _, l := range strings.Split(k.keyPEM, "\n") {
					if len(l) > 8 && !strings.HasPrefix(l, "-----") && strings.Contains(msg, l) {
						t.Errorf("message %q shows the private key", msg)
					}
				}
			}
		})
	}
}

// TestNBDWarnings: a private key file readable by group or others, and an
// expired certificate, give a warning.
func TestNBDWarnings(t *testing.T) {
	nbdFiles(t)
	for _, tt := range []struct {
		name string
		in   string
		want []string // substrings of the one warning, or nil for none
	}{
		{"key 0644", "tls_cert = " + nbdPath("nbd.crt") + "\ntls_key = " + nbdPath("nbd-0644.key") + "\n",
			[]string{testName + ":7: [NBD] tls_key: \"" + nbdPath("nbd-0644.key") + "\" is readable by group or others (mode 0644; expected 0600 or 0400): restrict it with: chmod 600 " + nbdPath("nbd-0644.key")}},
		{"key 0640", "tls_cert = " + nbdPath("nbd.crt") + "\ntls_key = " + nbdPath("nbd-0640.key") + "\n", []string{"[NBD] tls_key: ", "(mode 0640;"}},
		{"key 0600", nbdPair, nil},
		{"key 0400", "tls_cert = " + nbdPath("nbd.crt") + "\ntls_key = " + nbdPath("nbd-0400.key") + "\n", nil},
		{"certificate 0644", nbdPair + nbdCA, nil}, // certificates are public
		{"expired certificate", "tls_cert = " + nbdPath("expired.crt") + "\ntls_key = " + nbdPath("expired.key") + "\n",
			[]string{testName + ":6: [NBD] tls_cert: the certificate in \"" + nbdPath("expired.crt") + "\" expired on 2020-01-02, so clients refuse it (renew it; e.g. openssl req -x509"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse(testName, []byte(nbdInput(tt.in)))
			if err != nil {
				t.Fatal(err)
			}
			checkParsed(t, c)
			if tt.want == nil || runtime.GOOS == "windows" && strings.Contains(tt.name, "key") {
				if c.Warnings != nil && runtime.GOOS != "windows" {
					t.Errorf("warnings %q", c.Warnings)
				}
				return
			}
			if len(c.Warnings) != 1 {
				t.Fatalf("warnings %q, want one", c.Warnings)
			}
			for _, s := range tt.want {
				if !strings.Contains(c.Warnings[0], s) {
					t.Errorf("warning %q does not contain %q", c.Warnings[0], s)
				}
			}
		})
	}
}

// TestNBDFiles reads real PEM files next to a real configuration file,
// and serves TLS with the result of TLSConfig.
func TestNBDFiles(t *testing.T) {
	certs := testNBDCerts()
	dir := t.TempDir()
	cfg := filepath.Join(dir, "etc", "backy.cfg")
	write := func(name, content string, mode fs.FileMode) string {
		t.Helper()
		p := filepath.Join(dir, "etc", name)
		writeFile(t, p, content)
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	crt := write("tls/nbd.crt", certs.server.certPEM, 0o644)
	key := write("tls/nbd.key", certs.server.keyPEM, 0o644)
	ca := write("tls/clients.pem", certs.ca.certPEM, 0o644)
	writeFile(t, cfg, nbdInput("listen = [::1]:10809\ntls_cert = tls/nbd.crt\ntls_key = ./tls/nbd.key\ntls_client_ca = "+ca+"\n"))
	c, err := Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if w := (NBD{Listen: "[::1]:10809", TLSCert: crt, TLSKey: key, TLSClientCA: ca, TLS: "required"}); c.NBD != w {
		t.Errorf("got %+v, want %+v", c.NBD, w)
	}
	if runtime.GOOS != "windows" {
		if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], cfg+":8: [NBD] tls_key: \""+key+"\" is readable by group or others (mode 0644") {
			t.Errorf("warnings %q", c.Warnings)
		}
	}
	tc, err := c.NBD.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	checkTLSConfig(t, c.NBD, tc)

	// A client with a certificate of the CA gets through; one without
	// does not.
	roots := x509.NewCertPool()
	roots.AddCert(certs.server.cert)
	clientCert := must(tls.X509KeyPair([]byte(certs.client.certPEM), []byte(certs.client.keyPEM)))
	if err := handshake(tc, &tls.Config{RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{clientCert}}); err != nil {
		t.Errorf("handshake with a client certificate: %v", err)
	}
	if err := handshake(tc, &tls.Config{RootCAs: roots, ServerName: "localhost"}); err == nil {
		t.Error("handshake without a client certificate succeeded")
	}
	if err := handshake(tc, &tls.Config{RootCAs: roots, ServerName: "localhost", MaxVersion: tls.VersionTLS11}); err == nil {
		t.Error("handshake with TLS 1.1 succeeded")
	}
	// Without tls_client_ca clients need no certificate.
	c.NBD.TLSClientCA = ""
	tc, err = c.NBD.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	checkTLSConfig(t, c.NBD, tc)
	if err := handshake(tc, &tls.Config{RootCAs: roots, ServerName: "localhost"}); err != nil {
		t.Errorf("handshake without client CA: %v", err)
	}

	// TLSConfig reads the files again: errors name the file and key.
	n := c.NBD
	n.TLSKey = filepath.Join(dir, "gone.key")
	if _, err := n.TLSConfig(); err == nil || !strings.Contains(err.Error(), "[NBD] tls_key: cannot read \""+n.TLSKey+"\"") {
		t.Errorf("missing key: %v", err)
	}
	n = c.NBD
	n.TLSKey = write("tls/other.key", certs.other.keyPEM, 0o600)
	if _, err := n.TLSConfig(); err == nil || !strings.Contains(err.Error(), "[NBD] tls_key: cannot use the certificate in \""+crt+"\" with the private key in \""+n.TLSKey+"\"") {
		t.Errorf("mismatched key: %v", err)
	}
	n = c.NBD
	n.TLSClientCA = crt + ".missing"
	if _, err := n.TLSConfig(); err == nil || !strings.Contains(err.Error(), "[NBD] tls_client_ca: cannot read") {
		t.Errorf("missing client CA: %v", err)
	}
	for _, n := range []NBD{{TLS: "required"}, {TLS: "optional", TLSCert: crt}, {TLS: "yes", TLSCert: crt, TLSKey: key}} {
		if tc, err := n.TLSConfig(); err == nil || tc != nil {
			t.Errorf("%+v: TLSConfig() = %v, %v; want an error", n, tc, err)
		}
	}

	t.Run("directory", func(t *testing.T) {
		writeFile(t, cfg, nbdInput("tls_cert = "+dir+"\n"))
		_, err := Load(cfg)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), cfg+":6: [NBD] tls_cert: cannot read \""+dir+"\": is a directory") {
			t.Errorf("got %v", err)
		}
	})
	t.Run("unreadable", func(t *testing.T) {
		if runtime.GOOS == "windows" {
			t.Skip("no permission bits")
		}
		if unprivileged.Run(t) { // root reads every file
			return
		}
		p := write("tls/k000.key", certs.server.keyPEM, 0)
		writeFile(t, cfg, nbdInput("tls_cert = "+crt+"\ntls_key = "+p+"\n"))
		_, err := Load(cfg)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), cfg+":7: [NBD] tls_key: cannot read \""+p+"\": permission denied") {
			t.Errorf("got %v", err)
		}
	})
}

// handshake runs a TLS handshake between a server with config server and
// a client with config client over a pipe and returns the client's error,
// or the server's.
func handshake(server, client *tls.Config) error {
	sc, cc := net.Pipe()
	defer sc.Close()
	defer cc.Close()
	deadline := time.Now().Add(10 * time.Second)
	_ = sc.SetDeadline(deadline)
	_ = cc.SetDeadline(deadline)
	srvErr := make(chan error, 1)
	go func() {
		s := tls.Server(sc, server)
		err := s.Handshake()
		if err == nil {
			// TLS 1.3 clients learn that their certificate is refused
			// only on their first read.
			_, err = s.Write([]byte{1})
		}
		sc.Close()
		srvErr <- err
	}()
	cl := tls.Client(cc, client)
	err := cl.Handshake()
	if err == nil {
		_, err = cl.Read(make([]byte, 1))
	}
	cc.Close()
	if serr := <-srvErr; err == nil {
		err = serr
	}
	return err
}

// TestNBDExample parses the [NBD] section of backy.cfg.example, with its
// commented-out keys set, against fake files at the example's paths.
func TestNBDExample(t *testing.T) {
	data, err := os.ReadFile(examplePath)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	start := strings.Index(text, "\n[NBD]\n")
	if start < 0 {
		t.Fatal("example has no [NBD] section")
	}
	body := text[start+1:]
	if end := strings.Index(body, "\n# [EncryptionN]"); end >= 0 {
		body = body[:end]
	}
	// Every key is documented with its default.
	for _, kd := range nbdKeys {
		i := strings.Index(body, "\n"+kd.name+" = ")
		if i < 0 {
			i = strings.Index(body, "\n# "+kd.name+" = ")
		}
		if i < 0 {
			t.Errorf("example does not document %s", kd.name)
			continue
		}
		before := body[:i]
		para := before[strings.LastIndex(before, "\n\n")+1:]
		if !strings.Contains(para, "\n# Default: ") {
			t.Errorf("example does not give the default of %s", kd.name)
		}
	}
	for _, s := range []string{"NBD_OPT_STARTTLS", "--listen", "chmod 600", "openssl req -x509"} {
		if !strings.Contains(body, s) {
			t.Errorf("[NBD] of the example does not mention %q", s)
		}
	}
	// Uncomment the keys and parse.
	var b strings.Builder
	for _, l := range strings.Split(body, "\n") {
		for _, kd := range nbdKeys {
			if rest, ok := strings.CutPrefix(l, "# "+kd.name+" = "); ok {
				l = kd.name + " = " + rest
			}
		}
		b.WriteString(l + "\n")
	}
	crt, key, ca := filepath.Clean("/etc/backy/nbd.crt"), filepath.Clean("/etc/backy/nbd.key"), filepath.Clean("/etc/backy/nbd-clients.pem")
	certs := testNBDCerts()
	fakeSecretFiles(t, map[string]fakeFile{crt: {certs.server.certPEM, 0o644}, key: {certs.server.keyPEM, 0o600}, ca: {certs.ca.certPEM, 0o644}})
	c, err := Parse(testName, []byte(required+b.String()))
	if err != nil {
		t.Fatalf("example [NBD] with every key set:\n%s\ndoes not parse: %v", b.String(), err)
	}
	if w := (NBD{Listen: "127.0.0.1:10809", TLSCert: crt, TLSKey: key, TLSClientCA: ca, TLS: "required",
		MaxConnections: 64, MaxConnectionsPerClient: 16, HandshakeTimeout: 10 * time.Second}); c.NBD != w || c.Warnings != nil {
		t.Errorf("got %+v, warnings %q; want %+v", c.NBD, c.Warnings, w)
	}
}

// TestNBDStringsNoKey: printing a Config with TLS shows paths only.
func TestNBDStringsNoKey(t *testing.T) {
	nbdFiles(t)
	c, err := Parse(testName, []byte(nbdInput(nbdPair)))
	if err != nil {
		t.Fatal(err)
	}
	s := fmt.Sprintf("%v %+v %#v", c, c, *c)
	if strings.Contains(s, "PRIVATE KEY") || strings.Contains(s, "CERTIFICATE") {
		t.Errorf("%q shows PEM content", s)
	}
}

func TestParseListen(t *testing.T) {
	for _, tt := range []struct {
		in, want string
		ok       bool
	}{
		{"127.0.0.1:10809", "127.0.0.1:10809", true},
		{":1", ":1", true},
		{"[::1]:10809", "[::1]:10809", true},
		{"[127.0.0.1]:10809", "127.0.0.1:10809", true},
		{"h:65535", "h:65535", true},
		{"my_host.local:00080", "my_host.local:80", true},
		{"h:65536", "", false},
		{"h:0", "", false},
		{"h:99999999999999999999999", "", false},
		{"h:0x50", "", false},
		{":", "", false},
		{"h", "", false},
		{"", "", false},
		{"[::1]", "", false},
		{"[::1:10809", "", false},
		{"h/x:1", "", false},
		{"h\x00:1", "", false},
		{strings.Repeat("h", 254) + ":1", "", false},
	} {
		got, msg := parseListen(tt.in)
		if got != tt.want || (msg == "") != tt.ok {
			t.Errorf("parseListen(%q) = %q, %q; want %q, ok %v", tt.in, got, msg, tt.want, tt.ok)
		}
		if msg != "" && strings.ContainsAny(msg, "\r\n\x00") {
			t.Errorf("parseListen(%q): message %q is not one printable line", tt.in, msg)
		}
	}
}
