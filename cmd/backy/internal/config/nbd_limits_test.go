package config

import (
	"testing"
	"time"
)

// TestNBDLimits: [NBD] max_connections, max_connections_per_client and
// handshake_timeout (issue 13 item 19), each bounded.
func TestNBDLimits(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want NBD
	}{
		{"max_connections = 1\n", NBD{MaxConnections: 1}},
		{"max_connections = 4096\n", NBD{MaxConnections: 4096}},
		{"max_connections_per_client = 4\n", NBD{MaxConnectionsPerClient: 4}},
		{"handshake_timeout = 10s\n", NBD{HandshakeTimeout: 10 * time.Second}},
		{"handshake_timeout = 30\n", NBD{HandshakeTimeout: 30 * time.Second}},
		{"handshake_timeout = 1m30s\n", NBD{HandshakeTimeout: 90 * time.Second}},
		{"handshake_timeout = 10m\n", NBD{HandshakeTimeout: 10 * time.Minute}},
		{"handshake_timeout = 1s\n", NBD{HandshakeTimeout: time.Second}},
	} {
		c, err := Parse(testName, []byte(nbdInput(tt.in)))
		if err != nil {
			t.Errorf("%q: %v", tt.in, err)
			continue
		}
		w := tt.want
		w.Listen, w.TLS = "127.0.0.1:10809", "off"
		if c.NBD != w {
			t.Errorf("%q: got %+v, want %+v", tt.in, c.NBD, w)
		}
	}
	for _, tt := range []struct{ in, key, contains string }{
		{"max_connections = 0\n", "max_connections", `"0" is out of range (expected a number of sessions at once from 1 to 4096)`},
		{"max_connections = 4097\n", "max_connections", "from 1 to 4096"},
		{"max_connections = 99999999999999999999999\n", "max_connections", "out of range"},
		{"max_connections = -1\n", "max_connections", `"-1" is not a whole number`},
		{"max_connections =\n", "max_connections", "not a whole number"},
		{"max_connections_per_client = 1000000\n", "max_connections_per_client", "connections from one IP address from 1 to 4096"},
		{"max_connections_per_client = many\n", "max_connections_per_client", "not a whole number"},
		{"handshake_timeout = 0\n", "handshake_timeout", "from 1s to 10m"},
		{"handshake_timeout = 500ms\n", "handshake_timeout", "out of range"},
		{"handshake_timeout = 11m\n", "handshake_timeout", "out of range"},
		{"handshake_timeout = 601\n", "handshake_timeout", "out of range"},
		{"handshake_timeout = 99999999999999999999\n", "handshake_timeout", "out of range"},
		{"handshake_timeout = soon\n", "handshake_timeout", `"soon" is not a duration`},
		{"handshake_timeout = -5s\n", "handshake_timeout", "out of range"},
	} {
		t.Run(tt.in, func(t *testing.T) {
			checkParseError(t, nbdInput(tt.in), 6, tt.key, []string{tt.contains})
		})
	}
}
