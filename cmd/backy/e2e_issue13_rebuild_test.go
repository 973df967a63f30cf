package main

// End-to-end tests of issue 13, rebuild-metastore: item 1 (a version the
// old metastore knows is never dropped silently), item 6 (a lost
// keys/<N>.json with the key configured) and the blank values of item 30.
// Identifiers start with "e2eR13".

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestE2ER13MissingKeyRegistration (item 6): with keys/1.json gone,
// 'ls --from-backend' and rebuild-metastore (metastore deleted) work when
// the raw key is configured, in [DEFAULTS] or in the [Encryption1]
// section the old message suggested: the registration is made again from
// the key (the objects carry its key id) and keys/1.json rewritten. A
// wrong key is refused (77) and writes nothing. A passphrase, whose salt
// was only in the registration, is refused (77) saying what is missing
// and what to do.
func TestE2ER13MissingKeyRegistration(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		section bool
	}{{"key in DEFAULTS", false}, {"key in [Encryption1]", true}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := e2eNewBox(t)
			key := e2eEncNewMat(t, b.dir, "key_file", 1331)
			s := e2eMetaNew(b, "s", "encryption_version = 1", key.line())
			img := e2eMetaImage(t, b.path("one.img"), 20, []int{2}, 1332)
			v := s.backup(img, "vol", "--label", "a=b")
			reg := filepath.Join(s.data, "keys", "1.json")
			want := e2eReadFile(t, reg)
			wantLs := e2eMetaLs(s)
			read := s.e2eBox
			if tc.section {
				read = e2eEncWithConfig(b, e2eMetaConf(t, b.path("read.cfg"), s.db, s.data, "[Encryption1]", key.sectionLine()))
			}
			wrong := e2eEncWithConfig(b, e2eMetaConf(t, b.path("wrong.cfg"), s.db, s.data, "[Encryption1]",
				e2eEncNewMat(t, b.dir, "key_file", 1333).sectionLine()))

			if err := os.Remove(reg); err != nil {
				t.Fatal(err)
			}
			r := wrong.fail(77, "ls", "--from-backend")
			if !strings.Contains(r.stderr, "keys/1.json is missing") || !strings.Contains(r.stderr, "key id") {
				t.Errorf("a wrong key should be told apart, naming the missing registration and the key ids:\n%v", r)
			}
			if _, err := os.Stat(reg); err == nil {
				t.Error("a wrong key wrote keys/1.json")
			}
			vs := e2eDecode[[]e2eVersion](t, read.ok("ls", "--from-backend", "--json"))
			if len(vs) != 1 || vs[0].UID != v.UID || vs[0].Labels["a"] != "b" {
				t.Errorf("ls --from-backend without keys/1.json: %+v, want %s", vs, v.UID)
			}
			if got, err := os.ReadFile(reg); err != nil {
				t.Errorf("ls --from-backend did not rewrite keys/1.json: %v", err)
			} else if string(got[:strings.Index(string(got), `"registered"`)]) != string(want[:strings.Index(string(want), `"registered"`)]) {
				t.Errorf("keys/1.json rewritten as\n%s\nwant (but for the time)\n%s", got, want)
			}

			// The same for a rebuild, with the metastore gone too.
			if err := os.Remove(reg); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(s.db); err != nil {
				t.Fatal(err)
			}
			read.ok("rebuild-metastore", "--json")
			if _, err := os.Stat(reg); err != nil {
				t.Errorf("rebuild-metastore did not rewrite keys/1.json: %v", err)
			}
			e2eMetaSameLs(t, "after the rebuild", e2eMetaLs(s), wantLs)
			s.restore(v.UID, img)
			s.ok("deep-scrub", "--all")
		})
	}
	t.Run("passphrase", func(t *testing.T) {
		t.Parallel()
		b := e2eNewBox(t)
		pass := e2eEncNewMat(t, b.dir, "passphrase_file", 1334)
		s := e2eMetaNew(b, "s", "encryption_version = 1", pass.line())
		img := e2eMetaImage(t, b.path("one.img"), 8, nil, 1335)
		s.backup(img, "vol")
		if err := os.Remove(filepath.Join(s.data, "keys", "1.json")); err != nil {
			t.Fatal(err)
		}
		r := s.fail(77, "ls", "--from-backend")
		for _, want := range []string{"passphrase", "keys/1.json is missing", "salt", "backy import"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("the message should say what is missing and what to do (%q):\n%v", want, r)
			}
		}
		e2eEncNoSecrets(t, r, pass)
	})
}

// e2eR13Unused keeps imports used while the file grows.
var _ = slices.Equal[[]string]
