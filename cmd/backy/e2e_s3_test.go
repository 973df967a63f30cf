package main

// End-to-end tests of the S3 data backend: the built binary against a real
// S3 server (versitygw, started on 127.0.0.1 by s3test).

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/backy/backy/blockstore/backend/s3/s3test"
)

// e2eS3Config writes a configuration for bucket on srv and points the box
// at it. extraDefaults and extraData are added to [DEFAULTS] and
// [DataBackend].
func (b *e2eBox) useS3(srv *s3test.Server, bucket, prefix, extraDefaults, extraData string) string {
	b.t.Helper()
	path := b.s3Config("backy-s3.cfg", srv, bucket, prefix, extraDefaults, extraData)
	b.env = append(b.env, "BACKY_CONFIG="+path)
	return path
}

// s3Config writes the configuration file name for bucket on srv (see
// useS3) and returns its path.
func (b *e2eBox) s3Config(name string, srv *s3test.Server, bucket, prefix, extraDefaults, extraData string) string {
	b.t.Helper()
	secret := b.path("s3-secret")
	e2eWriteFile(b.t, secret, []byte(s3test.SecretKey+"\n"))
	if err := os.Chmod(secret, 0o600); err != nil {
		b.t.Fatal(err)
	}
	cfg := fmt.Sprintf(`[DEFAULTS]
%s
[MetaBackend]
path = %s

[DataBackend]
type = s3
endpoint = %s
bucket = %s
prefix = %s
region = %s
access_key_id = %s
secret_access_key_file = %s
max_attempts = 3
%s
`, extraDefaults, b.path(name+".meta/backy.db"), srv.Endpoint, bucket, prefix, s3test.Region, s3test.AccessKey, secret, extraData)
	path := b.path(name)
	e2eWriteFile(b.t, path, []byte(cfg))
	if err := os.Chmod(path, 0o600); err != nil {
		b.t.Fatal(err)
	}
	return path
}

// e2eS3Objects lists the keys below prefix in bucket.
func e2eS3Objects(t *testing.T, srv *s3test.Server, bucket, prefix string) []string {
	t.Helper()
	var keys []string
	p := s3.NewListObjectsV2Paginator(srv.Client(), &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
	}
	return keys
}

type e2eStats struct {
	Versions    int64 `json:"versions"`
	Blocks      int64 `json:"blocks"`
	StoredBytes int64 `json:"stored_bytes"`
	Trash       int64 `json:"trash_objects"`
}

// TestS3CLIEndToEnd: backup to S3 and restore bit-identical, dedup,
// scrub, deep-scrub, rm + cleanup (batch deletes), the orphan sweep and a
// damaged object, plain and with zstd + encryption.
func TestS3CLIEndToEnd(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	for _, tc := range []struct {
		name     string
		defaults string
	}{
		{"plain", ""},
		{"zstd+aes", "compression = zstd\nencryption_version = 1\nencryption_key = " + strings.Repeat("ab", 32) + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := e2eNewBox(t)
			bucket := srv.NewBucket(t)
			const prefix = "site-a/backy"
			b.useS3(srv, bucket, prefix, tc.defaults, "")
			b.ok("init")
			img := e2eExt4(t, b.dir, "disk", 31)
			rnd := b.path("random.img")
			e2eRandomFile(t, rnd, 21*e2eMiB+4321, 32)

			v1 := b.backup(img, "disk")
			v2 := b.backup(rnd, "random")
			b.restore(v1.UID, img)
			b.restore(v2.UID, rnd)
			// An unchanged source stores nothing new.
			v3 := b.backup(rnd, "random")
			if v3.BytesWritten != 0 {
				t.Errorf("an unchanged backup to S3 wrote %d bytes", v3.BytesWritten)
			}
			st := e2eDecode[e2eStats](t, b.ok("stats", "--json"))
			blocks := e2eS3Objects(t, srv, bucket, prefix+"/blocks/")
			if int64(len(blocks)) != st.Blocks {
				t.Errorf("the bucket holds %d block objects, stats says %d blocks", len(blocks), st.Blocks)
			}
			if keys := e2eS3Objects(t, srv, bucket, prefix+"/store.json"); len(keys) != 1 {
				t.Errorf("no store identity object in the bucket: %v", keys)
			}
			if tc.name != "plain" {
				// Encrypted: nothing in the bucket holds the plaintext.
				raw := e2eReadFile(t, rnd)[:4096]
				for _, k := range blocks[:min(len(blocks), 8)] {
					data := e2eReadFile(t, filepath.Join(srv.Dir(), bucket, k))
					if strings.Contains(string(data), string(raw[:64])) {
						t.Errorf("object %s holds plaintext", k)
					}
				}
			}

			b.ok("scrub", "--all")
			b.ok("deep-scrub", "--all")

			// rm + cleanup deletes the blocks only v2/v3 used.
			b.ok("rm", v2.UID, v3.UID)
			r := b.ok("cleanup", "--json")
			after := e2eDecode[e2eStats](t, b.ok("stats", "--json"))
			left := e2eS3Objects(t, srv, bucket, prefix+"/blocks/")
			if int64(len(left)) != after.Blocks || after.Blocks >= st.Blocks || after.Trash != 0 {
				t.Errorf("after cleanup: %d objects in the bucket, stats %+v (before %+v)\n%s", len(left), after, st, r.stdout)
			}
			b.restore(v1.UID, img)

			// The orphan sweep deletes an object no record names and
			// leaves a foreign key alone.
			cl := srv.Client()
			orphan := prefix + "/blocks/00/" + strings.Repeat("0", 30) + "ff"
			foreign := prefix + "/blocks/00/README"
			for _, k := range []string{orphan, foreign} {
				if _, err := cl.PutObject(context.Background(), &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(k), Body: strings.NewReader("x")}); err != nil {
					t.Fatal(err)
				}
			}
			b.ok("cleanup", "--orphans")
			rest := strings.Join(e2eS3Objects(t, srv, bucket, prefix+"/blocks/00/"), " ")
			if strings.Contains(rest, orphan) {
				t.Errorf("the orphan sweep left %s", orphan)
			}
			if !strings.Contains(rest, foreign) {
				t.Errorf("the orphan sweep deleted the foreign key %s", foreign)
			}
			b.ok("deep-scrub", "--all")

			// A block damaged where the server stores it: deep-scrub
			// finds it (exit 80) and marks v1 invalid.
			victim := filepath.Join(srv.Dir(), bucket, left[len(left)/2])
			data := e2eReadFile(t, victim)
			data[len(data)-7] ^= 0x40
			e2eWriteFile(t, victim, data)
			r = b.fail(80, "deep-scrub", "--all")
			if got := b.version(v1.UID); got.Status != "invalid" {
				t.Errorf("after a damaged block v1 is %q, want invalid\n%v", got.Status, r)
			}
		})
	}
}

// TestS3CLIErrors: a bucket that does not exist, wrong credentials and a
// server that is down are each one line with a distinct exit code, and
// nothing is recorded.
func TestS3CLIErrors(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)

	t.Run("no bucket", func(t *testing.T) {
		b := e2eNewBox(t)
		b.useS3(srv, "no-such-bucket", "", "", "")
		r := b.fail(78, "init")
		if !strings.Contains(r.stderr, "bucket does not exist") || !strings.Contains(r.stderr, "no-such-bucket") {
			t.Errorf("the message does not name the missing bucket:\n%v", r)
		}
		if _, err := os.Stat(b.path("backy-s3.cfg.meta/backy.db")); err == nil {
			t.Error("a failed init left a metastore")
		}
	})
	t.Run("wrong secret", func(t *testing.T) {
		b := e2eNewBox(t)
		b.useS3(srv, bucket, "wrong", "", "")
		e2eWriteFile(t, b.path("s3-secret"), []byte("not-the-secret\n"))
		r := b.fail(77, "init")
		if !strings.Contains(r.stderr, "access denied") || strings.Contains(r.stderr, "not-the-secret") {
			t.Errorf("want an access-denied line without the secret:\n%v", r)
		}
	})
	t.Run("credentials from the environment", func(t *testing.T) {
		b := e2eNewBox(t)
		cfg := b.useS3(srv, bucket, "env", "", "")
		// The same configuration without credentials.
		var lines []string
		for _, l := range strings.Split(string(e2eReadFile(t, cfg)), "\n") {
			if !strings.HasPrefix(l, "access_key_id") && !strings.HasPrefix(l, "secret_access_key") {
				lines = append(lines, l)
			}
		}
		e2eWriteFile(t, cfg, []byte(strings.Join(lines, "\n")))
		noIMDS := []string{"AWS_EC2_METADATA_DISABLED=true"}
		r := b.runEnv(noIMDS, "init")
		e2eWantFail(t, r, 77)
		if !strings.Contains(r.stderr, "no usable S3 credentials") {
			t.Errorf("without credentials:\n%v", r)
		}
		env := append(noIMDS, "AWS_ACCESS_KEY_ID="+s3test.AccessKey, "AWS_SECRET_ACCESS_KEY="+s3test.SecretKey)
		if r := b.runEnv(env, "init"); r.code != 0 {
			t.Fatalf("init with credentials from the environment:\n%v", r)
		}
		src := b.path("src.img")
		e2eRandomFile(t, src, 3*e2eMiB, 5)
		if r := b.runEnv(env, "backup", src, "vol"); r.code != 0 {
			t.Fatalf("backup with credentials from the environment:\n%v", r)
		}
	})
	t.Run("server down", func(t *testing.T) {
		b := e2eNewBox(t)
		cfg := b.useS3(srv, bucket, "down", "", "")
		b.ok("init")
		src := b.path("src.img")
		e2eRandomFile(t, src, 5*e2eMiB, 3)
		v := b.backup(src, "vol")
		// Point the store at a port where nothing listens.
		text := strings.Replace(string(e2eReadFile(t, cfg)), srv.Endpoint, "http://127.0.0.1:1", 1)
		e2eWriteFile(t, cfg, []byte(text))
		r := b.fail(74, "backup", src, "vol")
		if !strings.Contains(r.stderr, "cannot reach http://127.0.0.1:1") {
			t.Errorf("the message does not say the server is unreachable:\n%v", r)
		}
		b.fail(74, "restore", v.UID, b.path("out.img"))
		if _, err := os.Stat(b.path("out.img")); err == nil {
			t.Error("a failed restore left its target")
		}
		// Back on the real server: only the first version exists.
		e2eWriteFile(t, cfg, []byte(strings.Replace(text, "http://127.0.0.1:1", srv.Endpoint, 1)))
		if uids := b.lsUIDs(); len(uids) != 1 || uids[0] != v.UID {
			t.Errorf("after the failed backup ls lists %v, want only %s", uids, v.UID)
		}
		b.ok("deep-scrub", "--all")
	})
}

// TestS3CLIServerKilledMidBackup: the server is killed during a backup,
// which fails cleanly; once it is back, --resume completes the version
// and it restores bit-identically.
func TestS3CLIServerKilledMidBackup(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: a throttled 40 MiB backup")
	}
	t.Parallel()
	srv := s3test.Start(t)
	bucket := srv.NewBucket(t)
	b := e2eNewBox(t)
	// One worker: blocks are stored (and committed) in order.
	b.useS3(srv, bucket, "", "workers = 1\n", "bandwidth_write = 4MiB\n")
	b.ok("init")
	src := b.path("big.img")
	e2eRandomFile(t, src, 40*e2eMiB, 77)

	p := b.start("backup", src, "big")
	inc := b.waitVersion(p, func(v e2eVersion) bool { return v.Volume == "big" && v.Status == "incomplete" && v.BlocksDone > 0 })
	srv.Kill()
	r := p.wait(t)
	if r.code != exitIOErr {
		t.Fatalf("the backup with its server killed exited %d, want %d:\n%v", r.code, exitIOErr, r)
	}
	if l := e2eLines(r.stderr); len(l) != 1 || !strings.Contains(l[0], "--resume") {
		t.Errorf("want one line saying how to resume:\n%v", r)
	}
	srv.Restart(t)
	killed := b.version(inc.UID)
	if killed.Status != "incomplete" {
		t.Fatalf("after the failure the version is %+v, want incomplete", killed)
	}
	start := time.Now()
	res := b.backup(src, "big", "--resume", inc.UID)
	if res.Status != "valid" || res.UID != inc.UID {
		t.Fatalf("resume gave %+v", res)
	}
	t.Logf("killed with %d blocks committed; resume took %v", killed.BlocksDone, time.Since(start).Round(time.Millisecond))
	b.restore(inc.UID, src)
	b.ok("deep-scrub", "--all")
}

// TestS3CLICopy: copy versions from a local store to an encrypted S3 store
// and from there to another local store; each restores bit-identically,
// and a second copy sends nothing.
func TestS3CLICopy(t *testing.T) {
	t.Parallel()
	srv := s3test.Start(t)
	b := e2eNewBox(t) // the default store, local
	img := e2eExt4(t, b.dir, "disk", 41)
	v1 := b.backup(img, "disk")
	orig := b.path("disk-v1.img")
	e2eCopy(t, img, orig)
	e2eScribble(t, img, 3*e2eMiB, 2*e2eMiB, 42)
	v2 := b.backup(img, "disk")
	s3cfg := b.s3Config("s3.cfg", srv, srv.NewBucket(t), "copy", "compression = zstd\nencryption_version = 2\nencryption_key = "+strings.Repeat("5a", 32)+"\n", "")
	b.ok("-c", s3cfg, "init")
	b.ok("copy", v1.UID, v2.UID, "--to", s3cfg)
	r := b.ok("copy", "--all", "--to", s3cfg, "--json")
	if strings.Contains(r.stdout, `"blocks_sent": 1`) || !strings.Contains(r.stdout, "already there") {
		t.Errorf("a second copy was not a no-op:\n%v", r)
	}
	out := b.path("from-s3.img")
	b.ok("-c", s3cfg, "restore", v2.UID, out)
	e2eSameFile(t, out, img)

	// S3 -> another local store.
	local2 := b.path("local2.cfg")
	e2eWriteFile(t, local2, []byte(fmt.Sprintf("[MetaBackend]\npath = %s\n[DataBackend]\npath = %s\n", b.path("local2/backy.db"), b.path("local2/data"))))
	b.ok("-c", local2, "init")
	b.ok("-c", s3cfg, "copy", v1.UID, "--to", local2)
	out1 := b.path("from-local2.img")
	b.ok("-c", local2, "restore", v1.UID, out1)
	e2eSameFile(t, out1, orig)
	b.ok("-c", local2, "deep-scrub", "--all")
	b.ok("-c", s3cfg, "deep-scrub", "--all")
}
