package nbd

import (
	"bytes"
	"fmt"
	"slices"
	"testing"
	"time"
)

// do sends one request and waits for its reply.
func do(t testing.TB, tc *testClient, flags, typ uint16, handle, off uint64, length uint32, payload []byte) *reply {
	t.Helper()
	if err := tc.request(flags, typ, handle, off, length, payload); err != nil {
		t.Fatalf("request: %v", err)
	}
	r, err := tc.next()
	if err != nil {
		t.Fatalf("reply: %v", err)
	}
	if r.handle != handle {
		t.Fatalf("reply for handle %d, want %d", r.handle, handle)
	}
	return r
}

// readAt reads [off, off+n) and checks the reply's shape.
func readAt(t testing.TB, tc *testClient, handle, off uint64, n uint32) []byte {
	t.Helper()
	r := do(t, tc, 0, cmdRead, handle, off, n, nil)
	if r.errno != 0 {
		t.Fatalf("read [%d,+%d): errno %d", off, n, r.errno)
	}
	if tc.structOK == r.simple {
		t.Fatalf("read reply simple=%v with structured=%v", r.simple, tc.structOK)
	}
	data, err := readData(r, off, n)
	if err != nil {
		t.Fatalf("read [%d,+%d): %v", off, n, err)
	}
	return data
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7+i/251)
	}
	return b
}

func modes() []bool { return []bool{false, true} }

func modeName(structured bool) string {
	if structured {
		return "structured"
	}
	return "simple"
}

func TestCommands(t *testing.T) {
	for _, structured := range modes() {
		t.Run(modeName(structured), func(t *testing.T) {
			h := newHarness(t, Options{})
			tc, info := h.open("disk", structured)
			wantFlags := uint16(1 | 1<<2 | 1<<3 | 1<<5 | 1<<6)
			if structured {
				wantFlags |= 1 << 7
			}
			if info.size != 1<<20 || info.flags != wantFlags {
				t.Fatalf("info %+v, want flags %#x", info, wantFlags)
			}
			e := h.lastExport()
			st := h.x.stores["disk"]

			data := pattern(3*4096+100, 1)
			if r := do(t, tc, 0, cmdWrite, 1, 4096, uint32(len(data)), data); r.errno != 0 {
				t.Fatalf("write: %d", r.errno)
			}
			if got := readAt(t, tc, 2, 4096, uint32(len(data))); !bytes.Equal(got, data) {
				t.Fatal("read back differs")
			}
			if got := readAt(t, tc, 3, 4000, 200); !bytes.Equal(got[96:], data[:104]) || !bytes.Equal(got[:96], make([]byte, 96)) {
				t.Fatal("unaligned read differs")
			}

			// FUA and FLUSH reach Export.Flush.
			f0 := e.flushes.Load()
			if r := do(t, tc, cmdFlagFUA, cmdWrite, 4, 0, 10, data[:10]); r.errno != 0 {
				t.Fatalf("FUA write: %d", r.errno)
			}
			if e.flushes.Load() != f0+1 {
				t.Error("FUA write did not flush")
			}
			if r := do(t, tc, 0, cmdFlush, 5, 0, 0, nil); r.errno != 0 {
				t.Fatalf("flush: %d", r.errno)
			}
			if e.flushes.Load() != f0+2 {
				t.Error("FLUSH did not flush")
			}
			if r := do(t, tc, cmdFlagFUA, cmdTrim, 6, 1<<19, 4096, nil); r.errno != 0 || e.flushes.Load() != f0+3 {
				t.Errorf("FUA trim: errno %d, flushes %d", r.errno, e.flushes.Load()-f0)
			}

			// WRITE_ZEROES: punching allowed → hole; NO_HOLE → allocated.
			if r := do(t, tc, 0, cmdWriteZeroes, 7, 4096, 4096, nil); r.errno != 0 {
				t.Fatalf("write zeroes: %d", r.errno)
			}
			if got := readAt(t, tc, 8, 4096, 4096); !bytes.Equal(got, make([]byte, 4096)) {
				t.Error("zeroed range not zero")
			}
			if st.alloc[1] {
				t.Error("WRITE_ZEROES without NO_HOLE did not punch")
			}
			if r := do(t, tc, cmdFlagNoHole|cmdFlagFUA, cmdWriteZeroes, 9, 8192, 4096, nil); r.errno != 0 {
				t.Fatalf("write zeroes NO_HOLE: %d", r.errno)
			}
			if !st.alloc[2] || !bytes.Equal(st.snapshot()[8192:12288], make([]byte, 4096)) {
				t.Error("WRITE_ZEROES with NO_HOLE punched or did not zero")
			}

			// TRIM.
			if r := do(t, tc, 0, cmdTrim, 10, 12288, 4096, nil); r.errno != 0 {
				t.Fatalf("trim: %d", r.errno)
			}
			if st.alloc[3] {
				t.Error("trim did not punch")
			}

			// Zero lengths are harmless.
			for i, typ := range []uint16{cmdRead, cmdWrite, cmdTrim, cmdWriteZeroes} {
				if r := do(t, tc, 0, typ, uint64(20+i), 100, 0, nil); r.errno != 0 {
					t.Errorf("zero-length command %d: errno %d", typ, r.errno)
				}
			}
			// The whole device, up to its last byte.
			if got := readAt(t, tc, 30, 1<<20-1, 1); len(got) != 1 {
				t.Error("last byte")
			}

			tc.request(0, cmdDisc, 99, 0, 0, nil)
			expectClosed(t, tc.c)
			select {
			case reason := <-e.reason:
				if reason != nil {
					t.Errorf("Close(%v) after DISC, want nil", reason)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("export not closed")
			}
			h.stop()
			if n := e.closed.Load(); n != 1 {
				t.Errorf("Close called %d times", n)
			}
		})
	}
}

func TestReadOnly(t *testing.T) {
	for _, structured := range modes() {
		t.Run(modeName(structured), func(t *testing.T) {
			h := newHarness(t, Options{})
			tc, info := h.open("ro", structured)
			want := uint16(1 | 1<<1 | 1<<8)
			if structured {
				want |= 1 << 7
			}
			if info.flags != want {
				t.Errorf("flags %#x, want %#x", info.flags, want)
			}
			payload := pattern(4096, 3)
			for i, c := range []struct {
				typ     uint16
				flags   uint16
				payload []byte
			}{
				{cmdWrite, 0, payload},
				{cmdWrite, cmdFlagFUA, payload},
				{cmdWriteZeroes, 0, nil},
				{cmdWriteZeroes, cmdFlagNoHole, nil},
				{cmdTrim, 0, nil},
				{cmdFlush, 0, nil},
			} {
				length := uint32(len(c.payload))
				if c.typ == cmdWriteZeroes || c.typ == cmdTrim {
					length = 4096
				}
				r := do(t, tc, c.flags, c.typ, uint64(i), 0, length, c.payload)
				if r.errno != EPERM {
					t.Errorf("command %d on read-only export: errno %d, want EPERM", c.typ, r.errno)
				}
				// Still usable (the WRITE payload was consumed).
				readAt(t, tc, 100+uint64(i), 0, 512)
			}
			// FUA is not offered on a read-only export.
			if r := do(t, tc, cmdFlagFUA, cmdRead, 50, 0, 512, nil); r.errno != EINVAL {
				t.Errorf("FUA read on read-only export: errno %d, want EINVAL", r.errno)
			}
			if got := h.x.stores["ro"].snapshot(); !bytes.Equal(got, make([]byte, len(got))) {
				t.Error("read-only export modified")
			}
		})
	}
}

func TestInvalidRequests(t *testing.T) {
	const size = 1 << 20
	big := make([]byte, 128<<10)
	for _, tt := range []struct {
		name       string
		structured bool
		flags, typ uint16
		off        uint64
		length     uint32
		payload    []byte
		want       uint32
	}{
		{"read past end", false, 0, cmdRead, size - 100, 200, nil, EINVAL},
		{"read past end structured", true, 0, cmdRead, size - 100, 200, nil, EINVAL},
		{"read offset past end", false, 0, cmdRead, size + 1, 0, nil, EINVAL},
		{"read offset overflow", true, 0, cmdRead, 1<<64 - 10, 100, nil, EINVAL},
		{"write past end", false, 0, cmdWrite, size - 10, 100, make([]byte, 100), ENOSPC},
		{"write offset overflow", true, 0, cmdWrite, 1<<64 - 10, 100, make([]byte, 100), ENOSPC},
		{"write zeroes past end", false, 0, cmdWriteZeroes, size - 10, 4096, nil, ENOSPC},
		{"trim past end", true, 0, cmdTrim, size, 1, nil, EINVAL},
		{"read too large", false, 0, cmdRead, 0, 128 << 10, nil, EINVAL},
		{"read too large DF", true, cmdFlagDF, cmdRead, 0, 128 << 10, nil, EOVERFLOW},
		{"write too large", false, 0, cmdWrite, 0, uint32(len(big)), big, EINVAL},
		{"write too large structured", true, 0, cmdWrite, 0, uint32(len(big)), big, EINVAL},
		{"unknown command", false, 0, 99, 0, 0, nil, EINVAL},
		{"unknown command structured", true, 0, 99, 0, 4096, nil, EINVAL},
		{"cache", false, 0, cmdCache, 0, 4096, nil, EINVAL},
		{"resize", true, 0, cmdResize, 0, 0, nil, EINVAL},
		{"read NO_HOLE", false, cmdFlagNoHole, cmdRead, 0, 512, nil, EINVAL},
		{"read DF without structured", false, cmdFlagDF, cmdRead, 0, 512, nil, EINVAL},
		{"read unknown flag", true, 1 << 15, cmdRead, 0, 512, nil, EINVAL},
		{"write REQ_ONE", false, cmdFlagReqOne, cmdWrite, 0, 10, make([]byte, 10), EINVAL},
		{"write zeroes FAST_ZERO", false, cmdFlagFastZero, cmdWriteZeroes, 0, 4096, nil, EINVAL},
		{"flush with offset", false, 0, cmdFlush, 4096, 0, nil, EINVAL},
		{"flush with length", true, 0, cmdFlush, 0, 1, nil, EINVAL},
		{"block status without structured", false, 0, cmdBlockStatus, 0, 4096, nil, EINVAL},
		{"block status zero length", true, 0, cmdBlockStatus, 0, 0, nil, EINVAL},
		{"block status past end", true, 0, cmdBlockStatus, size - 1, 2, nil, EINVAL},
		{"block status DF", true, cmdFlagDF, cmdBlockStatus, 0, 512, nil, EINVAL},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Options{MaxRequest: 64 << 10})
			tc, _ := h.open("disk", tt.structured)
			r := do(t, tc, tt.flags, tt.typ, 77, tt.off, tt.length, tt.payload)
			if r.errno != tt.want {
				t.Errorf("errno %d, want %d", r.errno, tt.want)
			}
			if tt.structured {
				if r.simple || len(r.chunks) != 1 || r.chunks[0].typ != 1<<15+1 || r.chunks[0].flags != 1 {
					t.Errorf("structured error reply %+v, want one ERROR chunk with DONE", r)
				} else if p := r.chunks[0].payload; int(be.Uint16(p[4:]))+6 != len(p) {
					t.Errorf("error chunk message length %d in %d bytes", be.Uint16(p[4:]), len(p))
				}
			}
			// The connection is still usable.
			readAt(t, tc, 78, 0, 4096)
			if got := h.x.stores["disk"].snapshot(); !bytes.Equal(got, make([]byte, len(got))) {
				t.Error("refused request modified the export")
			}
		})
	}
}

func TestHugeWriteDisconnects(t *testing.T) {
	h := newHarness(t, Options{MaxRequest: 64 << 10})
	tc, _ := h.open("disk", false)
	// 64 MiB is over both MaxRequest and the 2^25 the spec asks to
	// tolerate: the server hangs up instead of draining it.
	tc.request(0, cmdWrite, 1, 0, 64<<20, nil)
	expectClosed(t, tc.c)
	select {
	case reason := <-h.lastExport().reason:
		if reason == nil {
			t.Error("Close(nil) after a protocol error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("export not closed")
	}
}

func TestBadRequestMagic(t *testing.T) {
	h := newHarness(t, Options{})
	tc, _ := h.open("disk", true)
	tc.write(bytes.Repeat([]byte{0xee}, 28))
	expectClosed(t, tc.c)
	if reason := <-h.lastExport().reason; reason == nil {
		t.Error("Close(nil) after bad magic")
	}
}

func TestStructuredReadHoles(t *testing.T) {
	h := newHarness(t, Options{})
	tc, info := h.open("disk", true)
	if info.flags&(1<<7) == 0 {
		t.Fatal("SEND_DF not advertised with structured replies")
	}
	// Blocks: 0 data, 1-2 hole, 3 data, 4-7 hole.
	a, b := pattern(4096, 1), pattern(4096, 2)
	do(t, tc, 0, cmdWrite, 1, 0, 4096, a)
	do(t, tc, 0, cmdWrite, 2, 3*4096, 4096, b)
	want := make([]byte, 8*4096)
	copy(want, a)
	copy(want[3*4096:], b)

	r := do(t, tc, 0, cmdRead, 3, 0, 8*4096, nil)
	got, err := readData(r, 0, 8*4096)
	if err != nil || r.errno != 0 {
		t.Fatalf("read: %v errno %d", err, r.errno)
	}
	if !bytes.Equal(got, want) {
		t.Error("data differs")
	}
	var types []uint16
	for _, c := range r.chunks {
		types = append(types, c.typ)
	}
	if !slices.Equal(types, []uint16{1, 2, 1, 2}) {
		t.Errorf("chunk types %v, want data, hole, data, hole", types)
	}
	for i, c := range r.chunks {
		if (c.flags&1 != 0) != (i == len(r.chunks)-1) {
			t.Errorf("chunk %d flags %#x", i, c.flags)
		}
	}

	// DF: exactly one content chunk, holes included as zeroes.
	r = do(t, tc, cmdFlagDF, cmdRead, 4, 100, 6*4096, nil)
	got, err = readData(r, 100, 6*4096)
	if err != nil || r.errno != 0 || !bytes.Equal(got, want[100:100+6*4096]) {
		t.Fatalf("DF read: %v errno %d", err, r.errno)
	}
	if len(r.chunks) != 1 || r.chunks[0].typ != 1 {
		t.Errorf("DF read sent %d chunks", len(r.chunks))
	}

	// Unaligned read across a hole boundary.
	r = do(t, tc, 0, cmdRead, 5, 4000, 5000, nil)
	if got, err := readData(r, 4000, 5000); err != nil || !bytes.Equal(got, want[4000:9000]) {
		t.Fatalf("unaligned read: %v", err)
	}
}

func TestReadErrors(t *testing.T) {
	for _, structured := range modes() {
		t.Run(modeName(structured), func(t *testing.T) {
			h := newHarness(t, Options{})
			h.x.onOpen = func(e *memExport) {
				e.failRead = func(off int64) error {
					if off >= 8192 && off < 12288 {
						return errTest
					}
					if off >= 12288 && off < 16384 {
						return fmt.Errorf("wrapped: %w", ErrOutOfRange)
					}
					return nil
				}
			}
			tc, _ := h.open("disk", structured)
			do(t, tc, 0, cmdWrite, 1, 0, 3*4096, pattern(3*4096, 5))

			r := do(t, tc, 0, cmdRead, 2, 8192, 4096, nil)
			if r.errno != EIO {
				t.Errorf("errno %d, want EIO", r.errno)
			}
			if structured {
				if c := r.chunks[len(r.chunks)-1]; c.typ != 1<<15+2 || c.flags != 1 {
					t.Errorf("last chunk %+v, want ERROR_OFFSET with DONE", c)
				} else if p := c.payload; be.Uint64(p[len(p)-8:]) != 8192 {
					t.Errorf("error offset %d", be.Uint64(p[len(p)-8:]))
				}
			} else if len(r.data) != 0 {
				t.Error("simple error reply carried data")
			}
			if r := do(t, tc, 0, cmdRead, 3, 12288, 100, nil); r.errno != EINVAL {
				t.Errorf("mapped errno %d, want EINVAL", r.errno)
			}
			// Still usable.
			readAt(t, tc, 4, 0, 4096)
		})
	}
}

// TestReadPartialError: data before the failure is delivered, then an
// ERROR_OFFSET at the failed segment.
func TestReadPartialError(t *testing.T) {
	h := newHarness(t, Options{})
	h.x.onOpen = func(e *memExport) {
		e.failRead = func(off int64) error {
			if off == 3*4096 {
				return errTest
			}
			return nil
		}
	}
	tc, _ := h.open("disk", true)
	a := pattern(4096, 9)
	do(t, tc, 0, cmdWrite, 1, 0, 4096, a)
	do(t, tc, 0, cmdWrite, 2, 3*4096, 4096, a)
	r := do(t, tc, 0, cmdRead, 3, 0, 4*4096, nil)
	if r.errno != EIO {
		t.Fatalf("errno %d", r.errno)
	}
	var types []uint16
	for _, c := range r.chunks {
		types = append(types, c.typ)
	}
	if !slices.Equal(types, []uint16{1, 2, 1<<15 + 2}) {
		t.Fatalf("chunk types %v", types)
	}
	if got, err := readData(r, 0, 4*4096); err != nil || !bytes.Equal(got[:4096], a) {
		t.Fatalf("partial data: %v", err)
	}
	if p := r.chunks[2].payload; be.Uint64(p[len(p)-8:]) != 3*4096 {
		t.Errorf("error offset %d", be.Uint64(p[len(p)-8:]))
	}
}

func TestBlockStatus(t *testing.T) {
	h := newHarness(t, Options{})
	tc, _ := h.open("disk", true)
	// Blocks 0-1 data, 2-3 hole, 4 data, rest hole.
	do(t, tc, 0, cmdWrite, 1, 0, 8192, pattern(8192, 1))
	do(t, tc, 0, cmdWrite, 2, 4*4096, 4096, pattern(4096, 2))
	for _, tt := range []struct {
		name   string
		flags  uint16
		off    uint64
		length uint32
		want   []descriptor
	}{
		{"all", 0, 0, 1 << 20, []descriptor{{8192, 0}, {8192, 3}, {4096, 0}, {1<<20 - 5*4096, 3}}},
		{"req one", cmdFlagReqOne, 0, 1 << 20, []descriptor{{8192, 0}}},
		{"req one clipped", cmdFlagReqOne, 100, 1000, []descriptor{{1000, 0}}},
		{"req one hole", cmdFlagReqOne, 9000, 1 << 19, []descriptor{{16384 - 9000, 3}}},
		{"tail", 0, 1<<20 - 100, 100, []descriptor{{100, 3}}},
		{"unaligned", 0, 4000, 5000, []descriptor{{8192 - 4000, 0}, {5000 - (8192 - 4000), 3}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, tc, tt.flags, cmdBlockStatus, 10, tt.off, tt.length, nil)
			if r.errno != 0 {
				t.Fatalf("errno %d", r.errno)
			}
			id, ds, err := blockStatusOf(r)
			if err != nil {
				t.Fatal(err)
			}
			if id != 1 {
				t.Errorf("context id %d, want the one SET_META_CONTEXT returned (1)", id)
			}
			if r.chunks[0].flags != 1 {
				t.Error("block status chunk without DONE")
			}
			if !slices.Equal(ds, tt.want) {
				t.Errorf("descriptors %v, want %v", ds, tt.want)
			}
		})
	}
}
