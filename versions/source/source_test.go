package source_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/backy/backy/versions/source"
)

func writeTemp(t *testing.T, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "image.raw")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestPathFromSpec(t *testing.T) {
	cases := []struct {
		spec, want string
		err        error
	}{
		{"/var/lib/img.raw", "/var/lib/img.raw", nil},
		{"relative/img", "relative/img", nil},
		{"file:///var/lib/img.raw", "/var/lib/img.raw", nil},
		{"file://localhost/var/img", "/var/img", nil},
		{"file:///dir/with%20space", "/dir/with space", nil},
		{"file://otherhost/var/img", "", source.ErrUnsupported},
		{"file://", "", source.ErrUnsupported},
		{"rbd://pool/image", "", source.ErrUnsupported},
		{"s3://bucket/key", "", source.ErrUnsupported},
		{"http://example.org/x", "", source.ErrUnsupported},
		{"file://%zz/x", "", source.ErrUnsupported},
	}
	for _, c := range cases {
		t.Run(c.spec, func(t *testing.T) {
			got, err := source.PathFromSpec(c.spec)
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("PathFromSpec(%q) = %q, %v; want %v", c.spec, got, err, c.err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("PathFromSpec(%q) = %q, %v; want %q", c.spec, got, err, c.want)
			}
		})
	}
}

func TestOpen(t *testing.T) {
	data := []byte("0123456789abcdef")
	path := writeTemp(t, data)
	dir := t.TempDir()
	cases := []struct {
		name string
		spec string
		err  error
	}{
		{"regular-file", path, nil},
		{"file-url", "file://" + path, nil},
		{"file-url-localhost", "file://localhost" + path, nil},
		{"missing", filepath.Join(dir, "nope"), source.ErrNotFound},
		{"missing-url", "file://" + filepath.Join(dir, "nope"), source.ErrNotFound},
		{"directory", dir, source.ErrUnsupported},
		{"char-device", "/dev/null", source.ErrUnsupported},
		{"rbd-url", "rbd://pool/image@snap", source.ErrUnsupported},
		{"https-url", "https://example.org/image.raw", source.ErrUnsupported},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := source.Open(c.spec)
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("Open(%q) = %v, want %v", c.spec, err, c.err)
				}
				if s != nil {
					t.Errorf("Open returned a source with an error")
				}
				return
			}
			if err != nil {
				t.Fatalf("Open(%q): %v", c.spec, err)
			}
			defer s.Close()
			if s.Size() != int64(len(data)) || s.Name() != path {
				t.Errorf("Size %d, Name %q", s.Size(), s.Name())
			}
			buf := make([]byte, 4)
			if n, err := s.ReadAt(buf, 4); n != 4 || err != nil || string(buf) != "4567" {
				t.Errorf("ReadAt = %d, %v, %q", n, err, buf)
			}
			// A read over the end is short with io.EOF.
			buf = make([]byte, 10)
			n, err := s.ReadAt(buf, 10)
			if n != 6 || !errors.Is(err, io.EOF) || string(buf[:n]) != "abcdef" {
				t.Errorf("ReadAt at the end = %d, %v", n, err)
			}
			if _, ok := any(s).(source.HoleFinder); !ok {
				t.Errorf("*File is no HoleFinder")
			}
		})
	}
}

// TestOpenSizeFixed: the size is taken at Open.
func TestOpenSizeFixed(t *testing.T) {
	path := writeTemp(t, make([]byte, 100))
	s, err := source.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := os.Truncate(path, 1000); err != nil {
		t.Fatal(err)
	}
	if s.Size() != 100 {
		t.Errorf("Size = %d after the file grew", s.Size())
	}
}

// sparseFile makes a file of size bytes whose chunks of chunk bytes are data
// where data[i] and holes elsewhere. It returns the path and the content.
func sparseFile(t *testing.T, chunk int64, data []bool) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sparse.raw")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size := chunk * int64(len(data))
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	content := make([]byte, size)
	r := rand.New(rand.NewPCG(1, 2))
	for i, d := range data {
		if !d {
			continue
		}
		p := content[int64(i)*chunk : int64(i+1)*chunk]
		for k := range p {
			p[k] = byte(r.Uint32()) | 1
		}
		if _, err := f.WriteAt(p, int64(i)*chunk); err != nil {
			t.Fatal(err)
		}
	}
	return path, content
}

// requireHoles skips the test where the file system does not report holes.
func requireHoles(t *testing.T, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 >= st.Size {
		t.Skipf("the file system of %s does not keep holes", path)
	}
}

func TestIsHole(t *testing.T) {
	const chunk = 64 << 10
	// hole, data, data, hole, hole, hole, data, hole, hole (trailing holes).
	layout := []bool{false, true, true, false, false, false, true, false, false}
	path, content := sparseFile(t, chunk, layout)
	requireHoles(t, path)
	size := int64(len(content))
	// isHole is the truth: the range lies within hole chunks.
	isHole := func(off, n int64) bool {
		if n <= 0 || off+n > size {
			return false
		}
		for c := off / chunk; c*chunk < off+n; c++ {
			if layout[c] {
				return false
			}
		}
		return true
	}
	type call struct{ off, n int64 }
	inOrder := func(step, n int64) []call {
		var out []call
		for off := int64(0); off < size; off += step {
			out = append(out, call{off, min(n, size-off)})
		}
		return out
	}
	r := rand.New(rand.NewPCG(3, 4))
	var random []call
	for range 300 {
		off := r.Int64N(size)
		random = append(random, call{off, 1 + r.Int64N(min(3*chunk, size-off))})
	}
	aligned4k := func(cs []call) []call {
		out := make([]call, 0, len(cs))
		for _, c := range cs {
			off := c.off &^ 4095
			n := (c.n + 4095) &^ 4095
			out = append(out, call{off, min(n, size-off)})
		}
		return out
	}
	var backwards []call
	for _, c := range inOrder(chunk, chunk) {
		backwards = append([]call{c}, backwards...)
	}
	cases := []struct {
		name  string
		calls []call
		exact bool // the answers must match the layout exactly
	}{
		{"in-order-chunks", inOrder(chunk, chunk), true},
		{"in-order-16k", inOrder(16<<10, 16<<10), true},
		{"in-order-straddling", inOrder(chunk, 2*chunk), true},
		{"in-order-offset-4k", append([]call{{4096, chunk}}, inOrder(chunk, chunk)[1:]...), true},
		{"backwards", backwards, true},
		{"random-4k-aligned", aligned4k(random), true},
		{"random", random, false},
		{"same-call-twice", []call{{0, chunk}, {0, chunk}, {chunk, chunk}, {chunk, chunk}, {0, chunk}}, true},
		{"past-the-end", []call{{size - chunk, 2 * chunk}, {size, chunk}, {size - chunk, chunk}}, true},
		{"empty-and-negative", []call{{0, 0}, {chunk, -1}, {0, chunk}}, true},
		{"after-data-then-before", []call{{7 * chunk, chunk}, {3 * chunk, chunk}, {0, chunk}, {6 * chunk, chunk}, {8 * chunk, chunk}}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, err := source.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for k, cl := range c.calls {
				got := s.IsHole(cl.off, cl.n)
				want := isHole(cl.off, cl.n)
				if got && !want {
					t.Fatalf("call %d: IsHole(%d, %d) = true over data", k, cl.off, cl.n)
				}
				if c.exact && got != want {
					t.Fatalf("call %d: IsHole(%d, %d) = %v, want %v", k, cl.off, cl.n, got, want)
				}
				if got && cl.n > 0 && !bytes.Equal(content[cl.off:cl.off+cl.n], make([]byte, cl.n)) {
					t.Fatalf("call %d: IsHole(%d, %d) = true but the range holds data", k, cl.off, cl.n)
				}
			}
		})
	}
}

// TestIsHoleNoTrailingHole: a file that ends with data, and one that is all
// data or all hole.
func TestIsHoleShapes(t *testing.T) {
	const chunk = 64 << 10
	cases := []struct {
		name   string
		layout []bool
	}{
		{"ends-with-data", []bool{false, false, true}},
		{"all-data", []bool{true, true}},
		{"all-hole", []bool{false, false, false}},
		{"starts-with-data", []bool{true, false, false}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path, _ := sparseFile(t, chunk, c.layout)
			if c.name != "all-data" {
				requireHoles(t, path)
			}
			s, err := source.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			for pass := range 2 { // the second pass runs backwards
				for k := range c.layout {
					i := k
					if pass == 1 {
						i = len(c.layout) - 1 - k
					}
					if got := s.IsHole(int64(i)*chunk, chunk); got != !c.layout[i] {
						t.Errorf("pass %d: IsHole(chunk %d) = %v", pass, i, got)
					}
				}
			}
		})
	}
}

func TestIsHoleEmptyFile(t *testing.T) {
	s, err := source.Open(writeTemp(t, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Size() != 0 || s.IsHole(0, 1) || s.IsHole(0, 0) {
		t.Errorf("empty file: size %d, IsHole(0,1) %v", s.Size(), s.IsHole(0, 1))
	}
}

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestCreateTargetNewFile(t *testing.T) {
	for _, commit := range []bool{true, false} {
		name := "abort"
		if commit {
			name = "commit"
		}
		for _, url := range []bool{false, true} {
			if url {
				name += "-url"
			}
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				path := filepath.Join(dir, "restored.img")
				spec := path
				if url {
					spec = "file://" + path
				}
				const size = 3<<20 + 5
				tgt, err := source.CreateTarget(spec, size, false)
				if err != nil {
					t.Fatal(err)
				}
				if tgt.Existing || tgt.Path() != path {
					t.Errorf("Existing %v, Path %q", tgt.Existing, tgt.Path())
				}
				if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("target visible before Commit: %v", err)
				}
				tmp := listDir(t, dir)
				if len(tmp) != 1 || !strings.HasPrefix(tmp[0], ".") {
					t.Fatalf("directory holds %q, want one hidden temporary file", tmp)
				}
				if fi, err := os.Stat(filepath.Join(dir, tmp[0])); err != nil || fi.Size() != size || fi.Mode().Perm() != 0o600 {
					t.Errorf("temporary file: %v, %v", fi, err)
				}
				if _, err := tgt.WriteAt([]byte("hello"), 1<<20); err != nil {
					t.Fatal(err)
				}
				// Zero on a new file: a no-op with sparse, zeros without.
				zeros := make([]byte, 4096)
				if err := tgt.Zero(0, 1<<20, true, zeros); err != nil {
					t.Fatal(err)
				}
				if err := tgt.Zero(2<<20, 1<<20+5, false, zeros); err != nil {
					t.Fatal(err)
				}
				if !commit {
					tgt.Abort()
					tgt.Abort() // twice is harmless
					if got := listDir(t, dir); len(got) != 0 {
						t.Fatalf("Abort left %q behind", got)
					}
					return
				}
				if err := tgt.Commit(); err != nil {
					t.Fatal(err)
				}
				if got := listDir(t, dir); len(got) != 1 || got[0] != "restored.img" {
					t.Fatalf("after Commit the directory holds %q", got)
				}
				b, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				want := make([]byte, size)
				copy(want[1<<20:], "hello")
				if !bytes.Equal(b, want) {
					t.Errorf("committed file differs")
				}
				tgt.Abort() // after Commit: leaves the file alone
				if _, err := os.Stat(path); err != nil {
					t.Errorf("Abort after Commit removed the file: %v", err)
				}
			})
		}
	}
}

// TestCreateTargetAppearedMeanwhile: Commit never replaces a file that
// appeared during the restore.
func TestCreateTargetAppearedMeanwhile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "img")
	tgt, err := source.CreateTarget(path, 10, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := tgt.Commit(); !errors.Is(err, source.ErrTargetExists) {
		t.Fatalf("Commit = %v, want ErrTargetExists", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "precious" {
		t.Errorf("file replaced: %q", b)
	}
	if got := listDir(t, dir); len(got) != 1 {
		t.Errorf("directory holds %q", got)
	}
}

func TestCreateTargetExisting(t *testing.T) {
	dir := t.TempDir()
	existing := filepath.Join(dir, "existing")
	if err := os.WriteFile(existing, bytes.Repeat([]byte{0xaa}, 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		spec  string
		size  int64
		force bool
		err   error
	}{
		{"exists-no-force", existing, 1000, false, source.ErrTargetExists},
		{"exists-no-force-url", "file://" + existing, 10, false, source.ErrTargetExists},
		{"too-small", existing, 1001, true, source.ErrTargetTooSmall},
		{"same-size", existing, 1000, true, nil},
		{"larger-than-needed", existing, 10, true, nil},
		{"directory", dir, 10, true, source.ErrBadTarget},
		{"directory-no-force", dir, 10, false, source.ErrBadTarget},
		{"char-device", "/dev/null", 10, true, source.ErrBadTarget},
		{"bad-scheme", "nbd://host/export", 10, true, source.ErrUnsupported},
		{"missing-parent", filepath.Join(dir, "no", "such", "dir"), 10, false, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tgt, err := source.CreateTarget(c.spec, c.size, c.force)
			if c.name == "missing-parent" {
				if err == nil {
					tgt.Abort()
					t.Fatal("CreateTarget in a missing directory succeeded")
				}
				return
			}
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("CreateTarget = %v, want %v", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tgt.Existing {
				t.Errorf("Existing = false")
			}
			if _, err := tgt.WriteAt([]byte("xy"), 5); err != nil {
				t.Fatal(err)
			}
			tgt.Abort() // an existing target stays, partly overwritten
			b, err := os.ReadFile(existing)
			if err != nil || len(b) != 1000 || string(b[5:7]) != "xy" || b[4] != 0xaa || b[7] != 0xaa {
				t.Fatalf("existing target after Abort: %d bytes, %v", len(b), err)
			}
			if err := os.WriteFile(existing, bytes.Repeat([]byte{0xaa}, 1000), 0o600); err != nil {
				t.Fatal(err)
			}
		})
	}
	if got := listDir(t, dir); len(got) != 1 {
		t.Errorf("directory holds %q", got)
	}
}

func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// TestZeroExisting: on an existing file Zero punches holes with sparse and
// writes zeros without.
func TestZeroExisting(t *testing.T) {
	const size = 4 << 20
	cases := []struct {
		name     string
		off, n   int64
		sparse   bool
		zeroBuf  int
		wantDrop bool
	}{
		{"sparse-middle", 1 << 20, 2 << 20, true, 64 << 10, true},
		{"sparse-unaligned", 1<<20 + 100, 1<<20 + 1000, true, 4096, true},
		{"sparse-tail", size - 256<<10, 256 << 10, true, 4096, true},
		{"zeros-middle", 1 << 20, 2 << 20, false, 64 << 10, false},
		{"zeros-small-buffer", 1<<20 + 7, 300001, false, 4096, false},
		{"zeros-tail", size - 12345, 12345, false, 1 << 20, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "disk")
			data := bytes.Repeat([]byte{0x5a}, size)
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			before := allocated(t, path)
			tgt, err := source.CreateTarget(path, size, true)
			if err != nil {
				t.Fatal(err)
			}
			if err := tgt.Zero(c.off, c.n, c.sparse, make([]byte, c.zeroBuf)); err != nil {
				t.Fatal(err)
			}
			if err := tgt.Commit(); err != nil {
				t.Fatal(err)
			}
			after := allocated(t, path)
			if c.wantDrop && after >= before {
				if before < size {
					t.Skipf("file system allocates lazily (%d bytes allocated)", before)
				}
				t.Errorf("sparse Zero left %d bytes allocated (before: %d)", after, before)
			}
			if !c.wantDrop && after < before {
				t.Errorf("Zero without sparse freed space: %d -> %d", before, after)
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			want := append([]byte(nil), data...)
			clear(want[c.off : c.off+c.n])
			if len(b) != size {
				t.Fatalf("size changed to %d", len(b))
			}
			if !bytes.Equal(b, want) {
				i := 0
				for i < len(b) && b[i] == want[i] {
					i++
				}
				t.Fatalf("content differs first at byte %d", i)
			}
		})
	}
}
