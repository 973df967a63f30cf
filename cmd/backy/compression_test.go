package main

import (
	"bytes"
	"testing"
)

// TestCompressionConfig: with compression = zstd, a compressible image is
// stored in fewer bytes than it has and restores bit-identically; turning
// compression on for an existing store re-stores nothing (dedup is by
// plaintext), and random data is stored uncompressed (kept only when it
// saves space).
func TestCompressionConfig(t *testing.T) {
	t.Parallel()
	b := e2eNewBox(t)
	conf := func(name, comp string) string {
		p := b.path(name)
		e2eWriteFile(t, p, []byte("[DEFAULTS]\ncompression = "+comp+"\ncompression_level = 2\n[MetaBackend]\npath = store/backy.db\n[DataBackend]\npath = store/data\n"))
		return p
	}
	plain, zstd := conf("plain.cfg", "none"), conf("zstd.cfg", "zstd")
	b.ok("-c", plain, "init")

	text := bytes.Repeat([]byte("backy stores every distinct block once; "), 8<<20/40)
	img := b.path("text.img")
	e2eWriteFile(t, img, text)
	rnd := b.path("random.img")
	e2eRandomFile(t, rnd, 8<<20, 5)

	v1 := e2eDecode[e2eVersion](t, b.ok("-c", plain, "backup", img, "text", "--json"))
	if v1.BytesWritten < v1.Size {
		t.Fatalf("compression none stored %d bytes of a %d-byte image", v1.BytesWritten, v1.Size)
	}
	// Turning compression on stores nothing again for the same data.
	v2 := e2eDecode[e2eVersion](t, b.ok("-c", zstd, "backup", img, "text", "--json"))
	if v2.BytesWritten != 0 {
		t.Fatalf("re-backup after enabling compression wrote %d bytes, want 0", v2.BytesWritten)
	}
	// New compressible data is stored compressed.
	text2 := bytes.ReplaceAll(text, []byte("once"), []byte("ONCE"))
	img2 := b.path("text2.img")
	e2eWriteFile(t, img2, text2)
	v3 := e2eDecode[e2eVersion](t, b.ok("-c", zstd, "backup", img2, "text", "--json"))
	if v3.BytesWritten == 0 || v3.BytesWritten > v3.Size/10 {
		t.Fatalf("zstd stored %d bytes of a %d-byte text image, want a small fraction", v3.BytesWritten, v3.Size)
	}
	vr := e2eDecode[e2eVersion](t, b.ok("-c", zstd, "backup", rnd, "random", "--json"))
	if vr.BytesWritten < vr.Size {
		t.Fatalf("random data stored in %d bytes of %d: compression that does not pay must not be kept", vr.BytesWritten, vr.Size)
	}
	// Every version restores, whatever the configuration that reads it.
	for _, c := range []struct{ uid, want string }{{v1.UID, img}, {v2.UID, img}, {v3.UID, img2}, {vr.UID, rnd}} {
		target := b.path("r-" + c.uid)
		b.ok("-c", plain, "restore", c.uid, target)
		e2eSameFile(t, target, c.want)
	}
}
