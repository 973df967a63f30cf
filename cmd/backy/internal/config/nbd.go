package config

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// NBD holds the keys of the [NBD] section: the settings of backy nbd, the
// NBD server.
type NBD struct {
	// Listen is the address the server listens on, host:port with a
	// numeric port from 1 to 65535, as accepted by [net.Listen]: the host
	// is an IP address (IPv6 in brackets), a host name, or "" for every
	// address. Default "127.0.0.1:10809". backy nbd --listen, when given,
	// takes precedence.
	Listen string
	// TLSCert is the absolute path of a PEM certificate chain (leaf
	// first) and TLSKey that of the PEM private key of its leaf; both set
	// or both "". They are checked to belong together while parsing.
	TLSCert, TLSKey string
	// TLSClientCA is the absolute path of a PEM file of one or more CA
	// certificates, "" for none. If set, clients must present a
	// certificate signed by one of them, and TLS is TLSRequired.
	TLSClientCA string
	// TLS is TLSOff, TLSOptional (clients may start TLS with
	// NBD_OPT_STARTTLS) or TLSRequired (clients must). Default TLSOff
	// without a certificate, TLSOptional with one, TLSRequired with
	// TLSClientCA. TLSOptional and TLSRequired imply TLSCert and TLSKey.
	TLS string
	// MaxConnections bounds the sessions (connections past the NBD
	// handshake), 1 to 4096; MaxConnectionsPerClient the connections from
	// one IP address, 1 to 4096; HandshakeTimeout how long a connection
	// may take to finish the handshake, 1s to 10m. 0 = the server's
	// default (64, 16, 10s; see versions/nbd).
	MaxConnections, MaxConnectionsPerClient int
	HandshakeTimeout                        time.Duration
}

// The values of [NBD].TLS.
const (
	TLSOff      = "off"
	TLSOptional = "optional"
	TLSRequired = "required"
)

const (
	defaultNBDListen = "127.0.0.1:10809"

	// maxPEMFileSize bounds what is read of a certificate, private key or
	// CA file.
	maxPEMFileSize = 1 << 20

	nbdKeyTLS      = "tls"
	nbdKeyMaxConns = "max_connections"
	nbdKeyPerIP    = "max_connections_per_client"
	nbdKeyHSTime   = "handshake_timeout"

	// The ranges of the limits of [NBD].
	maxNBDConns         = 4096
	minNBDHandshakeTime = time.Second
	maxNBDHandshakeTime = 10 * time.Minute
	nbdKeyCert          = "tls_cert"
	nbdKeyKey           = "tls_key"
	nbdKeyClientCA      = "tls_client_ca"

	// makeCert tells how to get a certificate and key for testing.
	makeCert = "e.g. openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 -subj /CN=backy-nbd -keyout nbd.key -out nbd.crt"
)

// What the PEM files of [NBD] hold, for messages.
const (
	whatCert     = "a PEM certificate chain (-----BEGIN CERTIFICATE-----, the server's certificate first)"
	whatKey      = "the PEM private key of the certificate (-----BEGIN PRIVATE KEY-----, unencrypted)"
	whatClientCA = "PEM CA certificates (-----BEGIN CERTIFICATE-----) that sign the clients' certificates"
)

// nbdKeys are the keys of [NBD], in documentation order.
var nbdKeys = []keyDef{
	{name: "listen", set: func(p *parser, v string) string {
		s, msg := parseListen(v)
		p.cfg.NBD.Listen = s
		return msg
	}},
	{name: nbdKeyCert, set: func(p *parser, v string) string {
		path, data, msg := p.nbdFile(v, whatCert, false)
		if msg != "" {
			return msg
		}
		certs, msg := parseCertChain(path, data)
		if msg != "" {
			return msg
		}
		if leaf := certs[0]; time.Now().After(leaf.NotAfter) {
			p.warnf("the certificate in %s expired on %s, so clients refuse it (renew it; %s)", quote(path), leaf.NotAfter.UTC().Format(time.DateOnly), makeCert)
		}
		p.cfg.NBD.TLSCert = path
		p.nbdCertPEM = data
		return ""
	}},
	{name: nbdKeyKey, set: func(p *parser, v string) string {
		path, data, msg := p.nbdFile(v, whatKey, true)
		if msg != "" {
			return msg
		}
		if msg := checkPrivateKeyPEM(path, data); msg != "" {
			return msg
		}
		p.cfg.NBD.TLSKey = path
		p.nbdKeyPEM = data
		return ""
	}},
	{name: nbdKeyTLS, set: func(p *parser, v string) string {
		s, msg := oneOf(v, "TLS mode", TLSOff, TLSOptional, TLSRequired)
		p.cfg.NBD.TLS = s
		return msg
	}},
	{name: nbdKeyClientCA, set: func(p *parser, v string) string {
		path, data, msg := p.nbdFile(v, whatClientCA, false)
		if msg != "" {
			return msg
		}
		if _, msg := parseCertPool(path, data); msg != "" {
			return msg
		}
		p.cfg.NBD.TLSClientCA = path
		return ""
	}},
	{name: nbdKeyMaxConns, set: func(p *parser, v string) string {
		n, msg := parseNBDCount(v, "sessions at once")
		p.cfg.NBD.MaxConnections = n
		return msg
	}},
	{name: nbdKeyPerIP, set: func(p *parser, v string) string {
		n, msg := parseNBDCount(v, "connections from one IP address")
		p.cfg.NBD.MaxConnectionsPerClient = n
		return msg
	}},
	{name: nbdKeyHSTime, set: func(p *parser, v string) string {
		d, msg := parseNBDHandshakeTimeout(v)
		p.cfg.NBD.HandshakeTimeout = d
		return msg
	}},
}

// parseNBDCount parses a limit of [NBD]: an integer from 1 to
// maxNBDConns, of what.
func parseNBDCount(v, what string) (int, string) {
	expected := fmt.Sprintf("expected a number of %s from 1 to %d", what, maxNBDConns)
	if v == "" || strings.Trim(v, "0123456789") != "" {
		return 0, fmt.Sprintf("%s is not a whole number (%s)", quote(v), expected)
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > maxNBDConns {
		return 0, fmt.Sprintf("%s is out of range (%s)", quote(v), expected)
	}
	return n, ""
}

// parseNBDHandshakeTimeout parses [NBD] handshake_timeout: a Go duration
// (10s, 1m) or a number of seconds, from 1s to 10m.
func parseNBDHandshakeTimeout(v string) (time.Duration, string) {
	return parseDuration(v, minNBDHandshakeTime, maxNBDHandshakeTime, "expected a duration such as 10s or 1m, or a number of seconds, from 1s to 10m")
}

// nbdFile resolves the path v of a PEM file of [NBD] holding what and
// reads it. If private, a file readable by group or others gives a
// warning.
func (p *parser) nbdFile(v, what string, private bool) (string, []byte, string) {
	if v == "" {
		return "", nil, "empty value (expected the path of a file holding " + what + ")"
	}
	path, msg := p.path(v)
	if msg != "" {
		return "", nil, msg
	}
	data, mode, msg := readPEMFile(path, what)
	if msg != "" {
		return "", nil, msg
	}
	if private && runtime.GOOS != "windows" && mode.Perm()&0o044 != 0 {
		p.warnf("%s is readable by group or others (mode %04o; expected 0600 or 0400): restrict it with: chmod 600 %s", quote(path), uint32(mode.Perm()), path)
	}
	return path, data, ""
}

// readPEMFile reads the file at path, which should hold what, and returns
// its content and mode or the problem.
func readPEMFile(path, what string) ([]byte, fs.FileMode, string) {
	data, mode, err := readSecretFile(path, maxPEMFileSize)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, 0, fmt.Sprintf("cannot read %s: %v (expected a readable file holding %s)", quote(path), err, what)
	}
	if len(data) > maxPEMFileSize {
		return nil, 0, fmt.Sprintf("%s is larger than %d bytes (expected a file holding %s)", quote(path), maxPEMFileSize, what)
	}
	return data, mode, ""
}

// parseCertChain parses the CERTIFICATE blocks of data, the content of
// the file path, skipping other blocks (so that the file may also hold
// the private key), and returns them in file order; there is at least one.
func parseCertChain(path string, data []byte) ([]*x509.Certificate, string) {
	var certs []*x509.Certificate
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Sprintf("certificate %d of %s does not parse: %v (expected %s)", len(certs)+1, quote(path), err, whatCert)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Sprintf("%s holds no PEM certificate (expected %s; %s)", quote(path), whatCert, makeCert)
	}
	return certs, ""
}

// checkPrivateKeyPEM checks that data, the content of the file path,
// holds an unencrypted PEM private key. Its messages never show the
// content.
func checkPrivateKeyPEM(path string, data []byte) string {
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "ENCRYPTED PRIVATE KEY" || strings.HasSuffix(b.Type, "PRIVATE KEY") && strings.Contains(b.Headers["Proc-Type"], "ENCRYPTED") {
			return fmt.Sprintf("the private key in %s is encrypted with a passphrase, which backy cannot ask for (expected an unencrypted PEM private key; decrypt it with: openssl pkey -in %s -out <new file>, chmod 600)", quote(path), path)
		}
		if strings.HasSuffix(b.Type, "PRIVATE KEY") {
			return ""
		}
	}
	return fmt.Sprintf("%s holds no PEM private key (expected %s)", quote(path), whatKey)
}

// parseCertPool parses data, the content of the file path, as PEM CA
// certificates: one or more CERTIFICATE blocks and nothing else.
func parseCertPool(path string, data []byte) (*x509.CertPool, string) {
	pool := x509.NewCertPool()
	n := 0
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		n++
		if b.Type != "CERTIFICATE" {
			return nil, fmt.Sprintf("PEM block %d of %s is a %s, not a CERTIFICATE (expected %s)", n, quote(path), quote(b.Type), whatClientCA)
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Sprintf("certificate %d of %s does not parse: %v (expected %s)", n, quote(path), err, whatClientCA)
		}
		pool.AddCert(c)
	}
	if n == 0 {
		return nil, fmt.Sprintf("%s holds no PEM certificate (expected %s)", quote(path), whatClientCA)
	}
	if strings.TrimSpace(string(rest)) != "" {
		return nil, fmt.Sprintf("%s holds something other than PEM certificates after certificate %d (expected %s)", quote(path), n, whatClientCA)
	}
	return pool, ""
}

// keyPair returns the certificate of the PEM certificate chain certPEM,
// read from certPath, and the PEM private key keyPEM, read from keyPath.
func keyPair(certPath string, certPEM []byte, keyPath string, keyPEM []byte) (tls.Certificate, string) {
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Sprintf("cannot use the certificate in %s with the private key in %s: %v (expected in tls_cert a PEM certificate chain, the server's certificate first, and in tls_key the private key of that certificate)",
			quote(certPath), quote(keyPath), err)
	}
	return c, ""
}

// ParseListen checks a listen address given outside the file (backy nbd
// --listen) by the rules of [NBD] listen: it returns the address as
// net.JoinHostPort writes it, or a one-line message saying what is wrong
// and what is expected.
func ParseListen(v string) (addr, msg string) { return parseListen(v) }

// parseListen checks that v is host:port with a numeric port from 1 to
// 65535 and returns it as net.JoinHostPort writes it.
func parseListen(v string) (string, string) {
	const expected = "expected host:port with a port from 1 to 65535, e.g. 127.0.0.1:10809, [::1]:10809, or :10809 for every address"
	if v == "" {
		return "", "empty value (" + expected + ")"
	}
	if strings.Contains(v, "://") {
		return "", fmt.Sprintf("%s is a URL, not host:port (%s)", quote(v), expected)
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		var ae *net.AddrError
		why := "not host:port"
		if errors.As(err, &ae) {
			why = ae.Err
		}
		hint := expected
		switch {
		case isIPv6(v):
			hint = fmt.Sprintf("write an IPv6 address in brackets: did you mean [%s]:10809?", v)
		case strings.Count(v, ":") > 1 && !strings.Contains(v, "["):
			hint = "write an IPv6 address in brackets, e.g. [::1]:10809"
		case strings.Trim(v, "0123456789") == "":
			hint = fmt.Sprintf("%s: did you mean 127.0.0.1:%s, or :%s for every address?", expected, v, v)
		case !strings.Contains(v, ":") && validHost(v):
			hint = fmt.Sprintf("%s: did you mean %s:10809?", expected, v)
		}
		return "", fmt.Sprintf("%s is not host:port: %s (%s)", quote(v), why, hint)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || strings.Trim(port, "0123456789") != "" {
		return "", fmt.Sprintf("%s: port %s is not a number from 1 to 65535 (%s)", quote(v), quote(port), expected)
	}
	if !validHost(host) {
		return "", fmt.Sprintf("%s: %s is neither an IP address nor a host name (%s)", quote(v), quote(host), expected)
	}
	return net.JoinHostPort(host, strconv.Itoa(n)), ""
}

// isIPv6 reports whether s is an IPv6 address without brackets.
func isIPv6(s string) bool {
	a, err := netip.ParseAddr(s)
	return err == nil && a.Is6()
}

// validHost reports whether h is "", an IP address (IPv6 possibly with a
// zone) or a host name of letters, digits, '-', '_' and '.'.
func validHost(h string) bool {
	if h == "" {
		return true
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	if len(h) > 253 {
		return false
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// finishNBD checks the keys of [NBD] as a whole once the file is read,
// whatever their order, and fills in the default of tls.
func (p *parser) finishNBD() error {
	n := &p.cfg.NBD
	lines := p.keyLine[sectionNBD] // nil without the section
	certLine, hasCert := lines[nbdKeyCert]
	keyLine, hasKey := lines[nbdKeyKey]
	tlsLine, hasTLS := lines[nbdKeyTLS]
	caLine, hasCA := lines[nbdKeyClientCA]

	switch {
	case hasCert && !hasKey:
		return p.errf(certLine, sectionNBD, nbdKeyCert, "no private key goes with it (set tls_key to the path of %s too, or remove tls_cert)", whatKey)
	case hasKey && !hasCert:
		return p.errf(keyLine, sectionNBD, nbdKeyKey, "no certificate goes with it (set tls_cert to the path of %s too, or remove tls_key)", whatCert)
	case hasCert:
		if _, msg := keyPair(n.TLSCert, p.nbdCertPEM, n.TLSKey, p.nbdKeyPEM); msg != "" {
			return p.errf(keyLine, sectionNBD, nbdKeyKey, "%s", msg)
		}
	}
	if !hasTLS {
		switch {
		case hasCA:
			n.TLS = TLSRequired
		case hasCert:
			n.TLS = TLSOptional
		default:
			n.TLS = TLSOff
		}
	} else if n.TLS != TLSOff && !hasCert {
		return p.errf(tlsLine, sectionNBD, nbdKeyTLS, "tls = %s needs a certificate (set tls_cert and tls_key to the paths of PEM files, %s; or set tls = off)", n.TLS, makeCert)
	}
	if hasCA {
		switch {
		case !hasCert:
			return p.errf(caLine, sectionNBD, nbdKeyClientCA, "needs TLS, which checks the client certificates (set tls_cert and tls_key too, or remove tls_client_ca)")
		case n.TLS == TLSOff:
			return p.errf(caLine, sectionNBD, nbdKeyClientCA, "has no effect with tls = off (line %d), which turns TLS off (set tls = required, or remove tls_client_ca)", tlsLine)
		case n.TLS == TLSOptional:
			return p.errf(tlsLine, sectionNBD, nbdKeyTLS, "tls = optional lets clients connect without TLS, and so without the client certificate tls_client_ca (line %d) asks for (set tls = required, or leave tls out: with tls_client_ca it defaults to required)", caLine)
		}
	}
	return nil
}

// TLSConfig returns the TLS configuration of the NBD server: nil if TLS is
// off, else one with the certificate and private key of TLSCert and TLSKey
// and MinVersion TLS 1.2 and, if TLSClientCA is set, ClientAuth
// [tls.RequireAndVerifyClientCert] with the CA certificates of TLSClientCA
// as ClientCAs. It reads the files again, so a renewed certificate is
// picked up; an error (a file that went missing or changed since the
// configuration was parsed) names the file.
func (n NBD) TLSConfig() (*tls.Config, error) {
	switch n.TLS {
	case "", TLSOff:
		return nil, nil
	case TLSOptional, TLSRequired:
	default:
		return nil, fmt.Errorf("config: [%s] %s: %s is not a valid TLS mode (expected one of %s, %s, %s)", sectionNBD, nbdKeyTLS, quote(n.TLS), TLSOff, TLSOptional, TLSRequired)
	}
	fail := func(key, msg string) error {
		return fmt.Errorf("config: [%s] %s: %s", sectionNBD, key, msg)
	}
	if n.TLSCert == "" || n.TLSKey == "" {
		return nil, fail(nbdKeyTLS, fmt.Sprintf("tls = %s needs a certificate (set tls_cert and tls_key)", n.TLS))
	}
	certPEM, _, msg := readPEMFile(n.TLSCert, whatCert)
	if msg != "" {
		return nil, fail(nbdKeyCert, msg)
	}
	keyPEM, _, msg := readPEMFile(n.TLSKey, whatKey)
	if msg != "" {
		return nil, fail(nbdKeyKey, msg)
	}
	if msg := checkPrivateKeyPEM(n.TLSKey, keyPEM); msg != "" {
		return nil, fail(nbdKeyKey, msg)
	}
	cert, msg := keyPair(n.TLSCert, certPEM, n.TLSKey, keyPEM)
	if msg != "" {
		return nil, fail(nbdKeyKey, msg)
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	if n.TLSClientCA != "" {
		data, _, msg := readPEMFile(n.TLSClientCA, whatClientCA)
		if msg != "" {
			return nil, fail(nbdKeyClientCA, msg)
		}
		pool, msg := parseCertPool(n.TLSClientCA, data)
		if msg != "" {
			return nil, fail(nbdKeyClientCA, msg)
		}
		c.ClientCAs = pool
		c.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return c, nil
}
