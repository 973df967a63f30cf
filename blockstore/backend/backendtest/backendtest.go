package backendtest

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/internal/clock"
)

// Run runs the conformance suite as subtests of t. newBackend must return
// a new, empty backend each time it is called (every subtest gets its own)
// and may be called from parallel subtests; it should register the
// backend's cleanup (Close, removing its data) with t.Cleanup. Run does not
// call Close itself.
func Run(t *testing.T, newBackend func(t *testing.T) backend.Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, b backend.Backend)
	}{
		{"PutGet", testPutGet},
		{"PutDoesNotRetainData", testPutDoesNotRetain},
		{"GetBuffers", testGetBuffers},
		{"Missing", testMissing},
		{"Stat", testStat},
		{"Overwrite", testOverwrite},
		{"BadNames", testBadNames},
		{"List", testList},
		{"ListStopsOnError", testListStopsOnError},
		{"Delete", testDelete},
		{"Concurrent", testConcurrent},
		{"CancelledContext", testCancelled},
		{"CancelDuringList", testCancelDuringList},
		{"Properties", testProperties},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newBackend(t))
		})
	}
}

// Bench runs Put and Get benchmarks of 4 MiB objects as sub-benchmarks of
// b. newBackend must return a new, empty backend each time.
func Bench(b *testing.B, newBackend func(b *testing.B) backend.Backend) {
	const size = 4 << 20
	data := payload(1, size)
	b.Run("Put4MiB", func(b *testing.B) {
		be := newBackend(b)
		ctx := b.Context()
		b.SetBytes(size)
		i := 0
		for b.Loop() {
			if err := be.Put(ctx, fmt.Sprintf("bench/put/%03d", i%64), data); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
	b.Run("Get4MiB", func(b *testing.B) {
		be := newBackend(b)
		ctx := b.Context()
		if err := be.Put(ctx, "bench/get", data); err != nil {
			b.Fatal(err)
		}
		var buf []byte
		b.SetBytes(size)
		for b.Loop() {
			var err error
			if buf, err = be.Get(ctx, "bench/get", buf); err != nil {
				b.Fatal(err)
			}
			if len(buf) != size {
				b.Fatalf("got %d bytes, want %d", len(buf), size)
			}
		}
	})
}

// payload returns size bytes that identify themselves: a header of the
// seed and the size, then pseudo-random bytes drawn from the seed. check
// recognises such a payload, so a reader can tell a complete version from
// a mix of two.
func payload(seed uint64, size int) []byte {
	p := make([]byte, size)
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	rand.NewChaCha8(key).Read(p)
	if size >= 16 {
		binary.LittleEndian.PutUint64(p, seed)
		binary.LittleEndian.PutUint64(p[8:], uint64(size))
	}
	return p
}

// check reports whether p is one complete payload of at least 16 bytes.
func check(p []byte) error {
	if len(p) < 16 {
		return fmt.Errorf("%d bytes, shorter than any version written", len(p))
	}
	seed := binary.LittleEndian.Uint64(p)
	size := binary.LittleEndian.Uint64(p[8:])
	if size != uint64(len(p)) {
		return fmt.Errorf("header says %d bytes (seed %#x), got %d: a mix of versions or a partial object", size, seed, len(p))
	}
	if !bytes.Equal(p, payload(seed, len(p))) {
		return fmt.Errorf("content of %d bytes does not match its header (seed %#x): a mix of versions", len(p), seed)
	}
	return nil
}

func put(t *testing.T, b backend.Backend, name string, data []byte) {
	t.Helper()
	if err := b.Put(t.Context(), name, data); err != nil {
		t.Fatalf("Put(%q, %d bytes): %v", name, len(data), err)
	}
}

func get(t *testing.T, b backend.Backend, name string) []byte {
	t.Helper()
	data, err := b.Get(t.Context(), name, nil)
	if err != nil {
		t.Fatalf("Get(%q): %v", name, err)
	}
	return data
}

func wantEqual(t *testing.T, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: got %d bytes %s, want %d bytes %s", what, len(got), head(got), len(want), head(want))
	}
}

func head(p []byte) string {
	if len(p) > 16 {
		return fmt.Sprintf("%x…", p[:16])
	}
	return fmt.Sprintf("%x", p)
}

func wantNotFound(t *testing.T, b backend.Backend, name string) {
	t.Helper()
	ctx := t.Context()
	if data, err := b.Get(ctx, name, nil); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Get(%q) = %d bytes, %v; want ErrNotFound", name, len(data), err)
	}
	if info, err := b.Stat(ctx, name); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Stat(%q) = %+v, %v; want ErrNotFound", name, info, err)
	}
}

// list returns name → size of the objects with the prefix, failing on a
// name reported twice or outside the prefix.
func list(t *testing.T, b backend.Backend, prefix string) map[string]int64 {
	t.Helper()
	got := map[string]int64{}
	err := b.List(t.Context(), prefix, func(info backend.Info) error {
		if _, dup := got[info.Name]; dup {
			t.Errorf("List(%q) reported %q twice", prefix, info.Name)
		}
		if !strings.HasPrefix(info.Name, prefix) {
			t.Errorf("List(%q) reported %q, which lacks the prefix", prefix, info.Name)
		}
		got[info.Name] = info.Size
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return got
}

func names(m map[string]int64) []string {
	s := make([]string, 0, len(m))
	for n := range m {
		s = append(s, n)
	}
	sort.Strings(s)
	return s
}

func testPutGet(t *testing.T, b backend.Backend) {
	for _, size := range []int{0, 1, 4<<20 + 17} {
		name := fmt.Sprintf("obj-%d", size)
		data := payload(uint64(size), size)
		put(t, b, name, data)
		wantEqual(t, "Get("+name+")", get(t, b, name), data)
	}
	nested := "a/b/c/d-e_f.g"
	data := payload(7, 1000)
	put(t, b, nested, data)
	wantEqual(t, "Get("+nested+")", get(t, b, nested), data)
	// A second object in an existing directory.
	put(t, b, "a/b/c/other", data[:10])
	wantEqual(t, "Get(a/b/c/other)", get(t, b, "a/b/c/other"), data[:10])
}

func testPutDoesNotRetain(t *testing.T, b backend.Backend) {
	data := payload(3, 4096)
	want := slices.Clone(data)
	put(t, b, "x", data)
	clear(data)
	wantEqual(t, "Get after the caller reused its buffer", get(t, b, "x"), want)
}

func testGetBuffers(t *testing.T, b backend.Backend) {
	ctx := t.Context()
	data := payload(5, 10000)
	put(t, b, "obj", data)
	empty := []byte{}
	put(t, b, "empty", empty)

	bufs := map[string]func() []byte{
		"nil":       func() []byte { return nil },
		"empty":     func() []byte { return []byte{} },
		"too small": func() []byte { return bytes.Repeat([]byte{0xee}, 10)[:3] },
		"large":     func() []byte { return bytes.Repeat([]byte{0xee}, 20000)[:17] },
		"exact":     func() []byte { return make([]byte, len(data)) },
	}
	for what, mk := range bufs {
		got, err := b.Get(ctx, "obj", mk())
		if err != nil {
			t.Fatalf("Get into a %s buffer: %v", what, err)
		}
		wantEqual(t, "Get into a "+what+" buffer", got, data)
		got, err = b.Get(ctx, "empty", mk())
		if err != nil {
			t.Fatalf("Get of an empty object into a %s buffer: %v", what, err)
		}
		if len(got) != 0 {
			t.Fatalf("Get of an empty object into a %s buffer returned %d bytes", what, len(got))
		}
	}
}

func testMissing(t *testing.T, b backend.Backend) {
	ctx := t.Context()
	put(t, b, "dir/x", []byte("x"))
	put(t, b, "obj", []byte("o"))
	for _, name := range []string{
		"missing",
		"no/such/dir/x",
		"dir",   // only a prefix of an object
		"dir/y", // a missing object next to one
		"obj/x", // below an object
		"ob",    // a prefix of an object's name
	} {
		wantNotFound(t, b, name)
		if err := b.Delete(ctx, name); !errors.Is(err, backend.ErrNotFound) {
			t.Errorf("Delete(%q) = %v, want ErrNotFound", name, err)
		}
	}
	// Failed lookups harmed nothing.
	wantEqual(t, "Get(dir/x)", get(t, b, "dir/x"), []byte("x"))
	wantEqual(t, "Get(obj)", get(t, b, "obj"), []byte("o"))
}

func testStat(t *testing.T, b backend.Backend) {
	// The real clock: the backend stamps ModTime with its own.
	before := clock.System.Now()
	for _, size := range []int{0, 1, 12345} {
		name := fmt.Sprintf("s/%d", size)
		put(t, b, name, payload(uint64(size), size))
		info, err := b.Stat(t.Context(), name)
		if err != nil {
			t.Fatalf("Stat(%q): %v", name, err)
		}
		if info.Size != int64(size) {
			t.Errorf("Stat(%q).Size = %d, want %d", name, info.Size, size)
		}
		if info.Name != name {
			t.Errorf("Stat(%q).Name = %q", name, info.Name)
		}
		// Generous bounds: a remote store's clock may differ from ours.
		if info.ModTime.IsZero() || info.ModTime.Before(before.Add(-24*time.Hour)) || info.ModTime.After(clock.System.Now().Add(24*time.Hour)) {
			t.Errorf("Stat(%q).ModTime = %v, want about %v", name, info.ModTime, before)
		}
	}
}

func testOverwrite(t *testing.T, b backend.Backend) {
	v1, v2, v3 := payload(1, 100000), payload(2, 10), payload(3, 50000)
	for _, v := range [][]byte{v1, v2, v3} {
		put(t, b, "o/x", v)
		wantEqual(t, "Get after overwrite", get(t, b, "o/x"), v)
		info, err := b.Stat(t.Context(), "o/x")
		if err != nil {
			t.Fatal(err)
		}
		if info.Size != int64(len(v)) {
			t.Errorf("Stat size after overwrite = %d, want %d", info.Size, len(v))
		}
	}
	if got := list(t, b, ""); len(got) != 1 || got["o/x"] != int64(len(v3)) {
		t.Errorf("List after overwrites = %v, want only o/x of %d bytes", got, len(v3))
	}
}

func testBadNames(t *testing.T, b backend.Backend) {
	ctx := t.Context()
	bad := []string{
		"", "/", "/a", "a/", "a//b", "..", "../x", "a/../b", "a/./b", ".", ".hidden",
		"a/.hidden", ".tmp-123", "A", "a/B", "a b", "a\\b", "a\x00b", "é", "a:b",
		strings.Repeat("a", 256),
	}
	for _, name := range bad {
		if backend.ValidName(name) {
			t.Fatalf("test bug: %q is a valid name", name)
		}
		if err := b.Put(ctx, name, []byte("x")); !errors.Is(err, backend.ErrBadName) {
			t.Errorf("Put(%q) = %v, want ErrBadName", name, err)
		}
		if _, err := b.Get(ctx, name, nil); !errors.Is(err, backend.ErrBadName) {
			t.Errorf("Get(%q) = %v, want ErrBadName", name, err)
		}
		if _, err := b.Stat(ctx, name); !errors.Is(err, backend.ErrBadName) {
			t.Errorf("Stat(%q) = %v, want ErrBadName", name, err)
		}
		if err := b.Delete(ctx, name); !errors.Is(err, backend.ErrBadName) {
			t.Errorf("Delete(%q) = %v, want ErrBadName", name, err)
		}
	}
	if got := list(t, b, ""); len(got) != 0 {
		t.Errorf("bad names stored objects: %v", names(got))
	}
	// The longest valid name works.
	long := strings.Repeat("a", 255)
	put(t, b, long, []byte("long"))
	wantEqual(t, "Get(255-byte name)", get(t, b, long), []byte("long"))
}

func testList(t *testing.T, b backend.Backend) {
	all := []string{
		"blocks/3f/3f01", "blocks/3f/3f02", "blocks/3f0/x", "blocks/40/4001",
		"blocks3", "versions/v1", "versions/v2", "top", "a/b/c/d/e", "a/b/c/f",
	}
	for i, name := range all {
		put(t, b, name, payload(uint64(i), 100+i)) // distinct sizes
	}
	size := map[string]int64{}
	for i, name := range all {
		size[name] = int64(100 + i)
	}
	for _, prefix := range []string{
		"", "b", "blocks", "blocks/", "blocks/3", "blocks/3f", "blocks/3f/", "blocks/3f/3f01",
		"blocks/3f/3f01x", "blocks/40/", "versions/v", "versions/", "t", "top", "a/", "a/b/c/",
		"a/b/c/d/", "nomatch", "nomatch/", "no/such/dir/", "top/", "A/", "../", "./", "/", "//",
		".tmp", "blocks/.",
	} {
		want := map[string]int64{}
		for _, name := range all {
			if strings.HasPrefix(name, prefix) {
				want[name] = size[name]
			}
		}
		got := list(t, b, prefix)
		if !equalMaps(got, want) {
			t.Errorf("List(%q) = %v, want %v", prefix, got, want)
		}
	}
	// List reports ModTime like Stat does.
	err := b.List(t.Context(), "top", func(info backend.Info) error {
		if info.ModTime.IsZero() {
			t.Errorf("List reported %q with a zero ModTime", info.Name)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func equalMaps(a, b map[string]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func testListStopsOnError(t *testing.T, b backend.Backend) {
	for i := range 5 {
		put(t, b, fmt.Sprintf("l/%d", i), []byte{byte(i)})
	}
	stop := errors.New("stop here")
	calls := 0
	err := b.List(t.Context(), "", func(backend.Info) error {
		calls++
		return stop
	})
	if !errors.Is(err, stop) {
		t.Errorf("List returned %v, want the error of fn", err)
	}
	if calls != 1 {
		t.Errorf("List called fn %d times after it failed, want once", calls)
	}
}

func testDelete(t *testing.T, b backend.Backend) {
	ctx := t.Context()
	put(t, b, "d/a", []byte("a"))
	put(t, b, "d/b", []byte("b"))
	if err := b.Delete(ctx, "d/a"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	wantNotFound(t, b, "d/a")
	if err := b.Delete(ctx, "d/a"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("second Delete = %v, want ErrNotFound", err)
	}
	if got := names(list(t, b, "")); !slices.Equal(got, []string{"d/b"}) {
		t.Errorf("List after Delete = %v, want [d/b]", got)
	}
	wantEqual(t, "Get of the neighbour of a deleted object", get(t, b, "d/b"), []byte("b"))
	// The last object of a directory, then a new one there.
	if err := b.Delete(ctx, "d/b"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if got := list(t, b, ""); len(got) != 0 {
		t.Errorf("List after deleting everything = %v", names(got))
	}
	put(t, b, "d/a", []byte("again"))
	wantEqual(t, "Get after Delete and Put", get(t, b, "d/a"), []byte("again"))
}

// testConcurrent runs Puts, Gets, Stats and Deletes from 16 goroutines on
// names of their own and on names they share. A Get of a shared name must
// return one complete version (or ErrNotFound), never a mix.
func testConcurrent(t *testing.T, b backend.Backend) {
	const (
		workers = 16
		rounds  = 24
		shared  = 3
	)
	ctx := t.Context()
	var wg sync.WaitGroup
	var mu sync.Mutex
	kept := map[string][]byte{} // own objects that must survive
	for g := range workers {
		wg.Go(func() {
			var buf []byte
			for i := range rounds {
				if t.Failed() {
					return
				}
				// An object of our own.
				own := fmt.Sprintf("conc/g%02d/o%02d", g, i)
				data := payload(uint64(g)<<32|uint64(i)<<8, 1000+(g*rounds+i)*97%20000)
				if err := b.Put(ctx, own, data); err != nil {
					t.Errorf("Put(%q): %v", own, err)
					return
				}
				got, err := b.Get(ctx, own, buf)
				if err != nil || !bytes.Equal(got, data) {
					t.Errorf("Get(%q) = %d bytes, %v; want the %d bytes just written", own, len(got), err, len(data))
					return
				}
				buf = got
				if i%3 == 0 {
					if err := b.Delete(ctx, own); err != nil {
						t.Errorf("Delete(%q): %v", own, err)
						return
					}
					if _, err := b.Get(ctx, own, nil); !errors.Is(err, backend.ErrNotFound) {
						t.Errorf("Get(%q) after Delete = %v, want ErrNotFound", own, err)
						return
					}
				} else {
					mu.Lock()
					kept[own] = data
					mu.Unlock()
				}

				// A shared object.
				name := fmt.Sprintf("conc/shared/s%d", (g+i)%shared)
				switch (g + i) % 5 {
				case 0, 1:
					size := 16 + (g*31+i*1013)%(128<<10)
					v := payload(uint64(g)<<32|uint64(i)<<8|1, size)
					if err := b.Put(ctx, name, v); err != nil {
						t.Errorf("Put(%q): %v", name, err)
						return
					}
				case 2, 3:
					got, err := b.Get(ctx, name, buf)
					if errors.Is(err, backend.ErrNotFound) {
						break
					}
					if err != nil {
						t.Errorf("Get(%q): %v", name, err)
						return
					}
					if err := check(got); err != nil {
						t.Errorf("Get(%q): %v", name, err)
						return
					}
					buf = got
					if _, err := b.Stat(ctx, name); err != nil && !errors.Is(err, backend.ErrNotFound) {
						t.Errorf("Stat(%q): %v", name, err)
						return
					}
				case 4:
					if err := b.Delete(ctx, name); err != nil && !errors.Is(err, backend.ErrNotFound) {
						t.Errorf("Delete(%q): %v", name, err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i := range shared {
		name := fmt.Sprintf("conc/shared/s%d", i)
		got, err := b.Get(ctx, name, nil)
		if errors.Is(err, backend.ErrNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("Get(%q): %v", name, err)
		}
		if err := check(got); err != nil {
			t.Errorf("Get(%q) after the storm: %v", name, err)
		}
	}
	listed := list(t, b, "conc/g")
	if len(listed) != len(kept) {
		t.Errorf("List found %d own objects, want %d", len(listed), len(kept))
	}
	for name, data := range kept {
		if listed[name] != int64(len(data)) {
			t.Errorf("List: %q has size %d, want %d", name, listed[name], len(data))
		}
		wantEqual(t, "Get("+name+") after the storm", get(t, b, name), data)
	}
}

func testCancelled(t *testing.T, b backend.Backend) {
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	expired, cancel2 := context.WithDeadline(t.Context(), clock.Deadline(-time.Second))
	defer cancel2()

	old := payload(1, 1000)
	put(t, b, "c/old", old)
	for _, c := range []struct {
		ctx  context.Context
		want error
	}{{cancelled, context.Canceled}, {expired, context.DeadlineExceeded}} {
		// Put of a new name and over an existing one, small and large.
		for _, size := range []int{10, 4 << 20} {
			if err := b.Put(c.ctx, "c/new", payload(2, size)); !errors.Is(err, c.want) {
				t.Errorf("Put(c/new) with a dead context = %v, want %v", err, c.want)
			}
			if err := b.Put(c.ctx, "c/old", payload(3, size)); !errors.Is(err, c.want) {
				t.Errorf("Put(c/old) with a dead context = %v, want %v", err, c.want)
			}
		}
		wantNotFound(t, b, "c/new")
		wantEqual(t, "Get(c/old) after a cancelled overwrite", get(t, b, "c/old"), old)

		if data, err := b.Get(c.ctx, "c/old", nil); !errors.Is(err, c.want) {
			t.Errorf("Get with a dead context = %d bytes, %v; want %v", len(data), err, c.want)
		}
		if _, err := b.Stat(c.ctx, "c/old"); !errors.Is(err, c.want) {
			t.Errorf("Stat with a dead context = %v, want %v", err, c.want)
		}
		if err := b.List(c.ctx, "", func(backend.Info) error { return nil }); !errors.Is(err, c.want) {
			t.Errorf("List with a dead context = %v, want %v", err, c.want)
		}
		if err := b.Delete(c.ctx, "c/old"); !errors.Is(err, c.want) {
			t.Errorf("Delete with a dead context = %v, want %v", err, c.want)
		}
		// Whether a cancelled Delete happened is up to the backend; put
		// the old object back for the next round.
		put(t, b, "c/old", old)
	}
	if got := names(list(t, b, "")); !slices.Equal(got, []string{"c/old"}) {
		t.Errorf("List after cancelled Puts = %v, want [c/old]", got)
	}
}

func testCancelDuringList(t *testing.T, b backend.Backend) {
	for i := range 20 {
		put(t, b, fmt.Sprintf("cl/%02d/x", i), []byte{byte(i)})
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	calls := 0
	err := b.List(ctx, "", func(backend.Info) error {
		calls++
		cancel()
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("List cancelled from fn returned %v, want context.Canceled", err)
	}
	if calls != 1 {
		t.Errorf("List called fn %d times after its context was cancelled, want once", calls)
	}
}

func testProperties(t *testing.T, b backend.Backend) {
	p := b.Properties()
	if p.Location == "" {
		t.Error("Properties().Location is empty")
	}
	if p.Connections < 1 {
		t.Errorf("Properties().Connections = %d, want at least 1", p.Connections)
	}
}
