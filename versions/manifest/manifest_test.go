package manifest

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zeebo/blake3"

	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
)

// content is everything a stream says, as the tests compare it.
type content struct {
	store    StoreInfo
	keys     []KeyReg
	versions []versionContent
}

type versionContent struct {
	v     *metastore.Version
	pages []Page
}

// readAll decodes a whole stream. It returns nil error only when
// NextVersion returned io.EOF.
func readAll(data []byte) (*content, error) {
	r, err := NewReader(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	c := &content{store: r.Store(), keys: r.Keys()}
	for {
		v, err := r.NextVersion()
		if err == io.EOF {
			return c, nil
		}
		if err != nil {
			return nil, err
		}
		vc := versionContent{v: v}
		for {
			p, err := r.NextPage()
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, err
			}
			vc.pages = append(vc.pages, Page{First: p.First, IDs: slices.Clone(p.IDs), Records: slices.Clone(p.Records)})
		}
		c.versions = append(c.versions, vc)
	}
}

// writeAll encodes c with the Writer.
func writeAll(c *content) ([]byte, error) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, c.store, c.keys)
	if err != nil {
		return nil, err
	}
	for _, vc := range c.versions {
		if err := w.BeginVersion(vc.v); err != nil {
			return nil, err
		}
		for _, p := range vc.pages {
			recs := make([]block.Record, len(p.IDs))
			for i, id := range p.IDs {
				if !id.IsSparse() {
					recs[i], _ = p.Record(id)
				}
			}
			if err := w.Page(p.IDs, recs); err != nil {
				return nil, err
			}
		}
		if err := w.EndVersion(); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	if w.Written() != int64(buf.Len()) {
		return nil, fmt.Errorf("Written() = %d, wrote %d bytes", w.Written(), buf.Len())
	}
	return buf.Bytes(), nil
}

// sameContent compares every field of two contents.
func sameContent(a, b *content) error {
	if a.store != b.store {
		return fmt.Errorf("store %+v, want %+v", b.store, a.store)
	}
	if len(a.keys) != len(b.keys) {
		return fmt.Errorf("%d keys, want %d", len(b.keys), len(a.keys))
	}
	for i := range a.keys {
		if a.keys[i].EncVersion != b.keys[i].EncVersion || !bytes.Equal(a.keys[i].Registration, b.keys[i].Registration) {
			return fmt.Errorf("key %d differs", i)
		}
	}
	if len(a.versions) != len(b.versions) {
		return fmt.Errorf("%d versions, want %d", len(b.versions), len(a.versions))
	}
	for i := range a.versions {
		va, vb := a.versions[i], b.versions[i]
		ja, _ := json.Marshal(va.v)
		jb, _ := json.Marshal(vb.v)
		if !bytes.Equal(ja, jb) {
			return fmt.Errorf("version %d:\n got %s\nwant %s", i, jb, ja)
		}
		if !va.v.Date.Equal(vb.v.Date) || (va.v.Expire == nil) != (vb.v.Expire == nil) ||
			va.v.Expire != nil && !va.v.Expire.Equal(*vb.v.Expire) || vb.v.Labels == nil {
			return fmt.Errorf("version %d: dates, expiry or labels differ", i)
		}
		if len(va.pages) != len(vb.pages) {
			return fmt.Errorf("version %d: %d pages, want %d", i, len(vb.pages), len(va.pages))
		}
		for j := range va.pages {
			pa, pb := va.pages[j], vb.pages[j]
			if pa.First != pb.First || !slices.Equal(pa.IDs, pb.IDs) || !slices.Equal(pa.Records, pb.Records) {
				return fmt.Errorf("version %d page %d differs", i, j)
			}
		}
	}
	return nil
}

const testBS = 4096

var testStoreID = [16]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}

func testStore() StoreInfo {
	return StoreInfo{StoreID: testStoreID, BlockSize: testBS, WrittenBy: "backy test <&>"}
}

func testKeys() []KeyReg {
	// Given out of order: the writer sorts.
	return []KeyReg{
		{EncVersion: 3, Registration: []byte(`{"format":1,"encryption_version":3,"cipher":"aes-256-gcm","key_id":"0011223344556677"}` + "\n")},
		{EncVersion: 1, Registration: []byte(`{"format":1,"encryption_version":1}`)},
	}
}

func testUID(i int) string { return fmt.Sprintf("V%012x%08x", 0x19000000000+i, i*7919) }

func newVersion(i int, size int64) *metastore.Version {
	v := &metastore.Version{
		UID:       testUID(i),
		Volume:    fmt.Sprintf("vm-%d-disk-0", i),
		Snapshot:  "snap",
		Date:      time.Date(2026, 11, 22, 3, 4, 5, 123456789, time.UTC).Add(time.Duration(i) * time.Hour),
		Size:      size,
		BlockSize: testBS,
		Status:    metastore.StatusValid,
	}
	v.BlocksDone = v.Blocks()
	return v
}

func idOf(seed, i int) block.ID { return block.Sum([]byte(fmt.Sprintf("%d/%d", seed, i))) }

// recordOf is the deterministic record of id holding size bytes.
func recordOf(id block.ID, size uint32) block.Record {
	r := block.Record{ID: id, Size: size, StoredSize: size/2 + MinStoredSize}
	copy(r.Name[:], id[8:])
	switch id[0] % 3 {
	case 1:
		r.EncVersion = 1
	case 2:
		r.EncVersion = 3
	}
	r.Compression = block.Compression(id[1] % 2)
	r.Invalid = id[2]%5 == 0
	return r
}

// versionContent builds the pages of a version whose entries are given;
// entries and records follow the rules (records sized by position).
func buildVersion(v *metastore.Version, ids []block.ID) versionContent {
	vc := versionContent{v: v}
	s := newVerState(v)
	for first := 0; first < len(ids); first += blockmap.PageEntries {
		p := Page{First: int64(first), IDs: ids[first:min(first+blockmap.PageEntries, len(ids))]}
		seen := map[block.ID]bool{}
		for i, id := range p.IDs {
			if id.IsSparse() || seen[id] {
				continue
			}
			seen[id] = true
			p.Records = append(p.Records, recordOf(id, s.blockSize(int64(first+i))))
		}
		vc.pages = append(vc.pages, p)
	}
	return vc
}

// entriesOf makes n entries: sparse ones, an id repeated within and across
// pages, and distinct ones (always at the last index, which may be short).
func entriesOf(seed int, n int) []block.ID {
	common := idOf(seed, -1)
	ids := make([]block.ID, n)
	for i := range ids {
		switch {
		case i == n-1:
			ids[i] = idOf(seed, i)
		case i%5 == 0:
			// sparse
		case i%7 == 0:
			ids[i] = common
		default:
			ids[i] = idOf(seed, i)
		}
	}
	return ids
}

func testContent() *content {
	c := &content{store: testStore(), keys: testKeys()}
	slices.SortFunc(c.keys, func(a, b KeyReg) int { return int(a.EncVersion) - int(b.EncVersion) })
	add := func(v *metastore.Version) {
		if v.Labels == nil {
			v.Labels = map[string]string{}
		}
		c.versions = append(c.versions, buildVersion(v, entriesOf(len(c.versions), int(v.Blocks()))))
	}
	add(newVersion(0, 0))
	add(newVersion(1, 1))
	add(newVersion(2, testBS))
	v := newVersion(3, testBS+1)
	v.Status = metastore.StatusInvalid
	v.Protected = true
	add(v)
	v = newVersion(4, (2*blockmap.PageEntries+5)*testBS-100)
	exp := time.Date(2027, 1, 2, 3, 4, 5, 0, time.FixedZone("X", 3600))
	v.Expire = &exp
	v.Labels = map[string]string{"app": "db", "tier": "gold"}
	v.Base = testUID(3)
	v.LastScrub = &metastore.ScrubRecord{At: exp, Kind: "deep-scrub", Percent: 12.5, OK: false, BlocksChecked: 9, BlocksBad: 1}
	v.BytesRead, v.BytesWritten, v.BytesDeduplicated, v.BytesSparse, v.DurationSeconds = 1, 2, 3, 4, 5.25
	add(v)
	return c
}

// smallContent is a few small versions, for exhaustive damage tests.
func smallContent() *content {
	c := testContent()
	c.versions = c.versions[:4]
	return c
}

func TestRoundTrip(t *testing.T) {
	want := testContent()
	data, err := writeAll(want)
	if err != nil {
		t.Fatal(err)
	}
	got, err := readAll(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := sameContent(want, got); err != nil {
		t.Fatal(err)
	}
	// The big version: repeated ids, sparse entries, all record kinds.
	big := got.versions[4]
	if len(big.pages) != 3 || len(big.pages[2].IDs) != 5 || big.pages[1].First != blockmap.PageEntries {
		t.Fatalf("pages of the big version: %d", len(big.pages))
	}
	var invalid, enc, zstd int
	for _, p := range big.pages {
		for _, r := range p.Records {
			if r.Invalid {
				invalid++
			}
			if r.EncVersion > 0 {
				enc++
			}
			if r.Compression == block.CompressionZstd {
				zstd++
			}
		}
	}
	if invalid == 0 || enc == 0 || zstd == 0 {
		t.Fatalf("records not varied: %d invalid, %d encrypted, %d zstd", invalid, enc, zstd)
	}
	last := big.pages[2]
	r, ok := last.Record(last.IDs[4])
	if !ok || int64(r.Size) != big.v.Size-(big.v.Blocks()-1)*testBS {
		t.Fatalf("last record %+v", r)
	}
	if _, ok := last.Record(block.Sparse); ok {
		t.Fatal("a record for the sparse id")
	}
	// Labels of a version written with none decode as an empty map.
	if got.versions[0].v.Labels == nil {
		t.Fatal("nil labels")
	}
}

func TestReaderRecordLookupAndSkip(t *testing.T) {
	data, err := writeAll(testContent())
	if err != nil {
		t.Fatal(err)
	}
	r, err := NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if r.Store() != testStore() || len(r.Keys()) != 2 || r.Keys()[0].EncVersion != 1 {
		t.Fatalf("store %+v keys %v", r.Store(), r.Keys())
	}
	if _, err := r.NextPage(); err != io.EOF {
		t.Fatalf("NextPage before a version: %v", err)
	}
	var uids []string
	for {
		v, err := r.NextVersion()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		uids = append(uids, v.UID)
		if v.Size > testBS*blockmap.PageEntries {
			// Read one page, check the lookup, skip the rest.
			p, err := r.NextPage()
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range p.IDs {
				rec, ok := p.Record(id)
				if id.IsSparse() != !ok || ok && rec.ID != id {
					t.Fatalf("lookup of %s: %v %+v", id.Short(), ok, rec)
				}
			}
		}
	}
	if len(uids) != 5 {
		t.Fatalf("versions %v", uids)
	}
	if _, err := r.NextVersion(); err != io.EOF {
		t.Fatalf("after the end: %v", err)
	}
}

func TestTruncations(t *testing.T) {
	data, err := writeAll(smallContent())
	if err != nil {
		t.Fatal(err)
	}
	for n := 0; n < len(data); n++ {
		_, err := readAll(data[:n])
		if !errors.Is(err, ErrInvalid) || !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("prefix of %d of %d bytes: %v", n, len(data), err)
		}
	}
}

func TestByteFlips(t *testing.T) {
	data, err := writeAll(smallContent())
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(data)
	for i := range data {
		for _, x := range []byte{0x01, 0x80, 0xff} {
			bad[i] = data[i] ^ x
			_, err := readAll(bad)
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNewerFormat) {
				t.Fatalf("byte %d ^ %#x: %v", i, x, err)
			}
		}
		bad[i] = data[i]
	}
}

// Raw stream construction for the reject tests: any frame, with a correct
// trailer, so each test reaches the check it is about.

func frame(kind byte, payload []byte) []byte {
	b := append([]byte{kind}, binary.AppendUvarint(nil, uint64(len(payload)))...)
	return append(b, payload...)
}

func seal(body []byte, versions uint64) []byte {
	sum := blake3.Sum256(body)
	p := binary.AppendUvarint(nil, versions)
	return append(bytes.Clone(body), frame('T', append(p, sum[:]...))...)
}

func header() []byte { return []byte(Magic + "\x01") }

func storeFrame(bs int64) []byte {
	return frame('S', fmt.Appendf(nil, `{"format":1,"store_id":"%x","block_size":%d,"written_by":"t"}`, testStoreID, bs))
}

func keyFrame(v uint16, reg string) []byte {
	return frame('K', append(binary.BigEndian.AppendUint16(nil, v), reg...))
}

func versionFrame(v *metastore.Version) []byte {
	j, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return frame('V', j)
}

func pageFrame(ids []block.ID, recs ...block.Record) []byte {
	p := blockmap.Encode(ids)
	for i := range recs {
		p = appendRecord(p, &recs[i])
	}
	return frame('P', p)
}

func endFrame(pages, entries uint64) []byte {
	return frame('E', binary.AppendUvarint(binary.AppendUvarint(nil, pages), entries))
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// start is a stream's beginning: header, S with the test block size, K 1.
func start() []byte { return cat(header(), storeFrame(testBS), keyFrame(1, `{}`)) }

// oneBlock is a stream of one version of one full block with record r.
func oneBlock(r block.Record) []byte {
	v := newVersion(1, testBS)
	return seal(cat(start(), versionFrame(v), pageFrame([]block.ID{r.ID}, r), endFrame(1, 1)), 1)
}

func TestRejects(t *testing.T) {
	id := idOf(9, 9)
	good := block.Record{ID: id, Size: testBS, StoredSize: 100}
	with := func(f func(*block.Record)) block.Record { r := good; f(&r); return r }
	ver := func(f func(*metastore.Version)) []byte {
		v := newVersion(1, 0)
		f(v)
		return seal(cat(start(), versionFrame(v), endFrame(0, 0)), 1)
	}
	v0 := versionFrame(newVersion(0, 0))
	ids := func(n int, id block.ID) []block.ID {
		out := make([]block.ID, n)
		for i := range out {
			out[i] = id
		}
		return out
	}
	big := newVersion(2, (blockmap.PageEntries+6)*testBS)
	sealedStream := seal(cat(start(), v0, endFrame(0, 0)), 1)

	for _, tc := range []struct {
		name   string
		data   []byte
		want   error
		substr string
	}{
		{"valid one block", oneBlock(good), nil, ""},
		{"empty", nil, io.ErrUnexpectedEOF, "header"},
		{"wrong magic", cat([]byte("BKYO\x01"), storeFrame(testBS)), ErrInvalid, "not a version metadata stream"},
		{"newer format", cat([]byte(Magic+"\x02"), storeFrame(testBS)), ErrNewerFormat, "upgrade backy"},
		{"format 0", cat([]byte(Magic+"\x00"), storeFrame(testBS)), ErrInvalid, "unknown format"},
		{"no store frame", seal(header(), 0), ErrInvalid, "must begin with a store"},
		{"store block size", seal(cat(header(), storeFrame(4097)), 0), ErrInvalid, "block size"},
		{"store block size big", seal(cat(header(), storeFrame(128<<20)), 0), ErrInvalid, "block size"},
		{"store format", seal(cat(header(), frame('S', []byte(`{"format":2,"store_id":"00000000000000000000000000000000","block_size":4096}`))), 0), ErrInvalid, "format 2"},
		{"store id upper", seal(cat(header(), frame('S', []byte(`{"format":1,"store_id":"0000000000000000000000000000000A","block_size":4096}`))), 0), ErrInvalid, "store id"},
		{"store json", seal(cat(header(), frame('S', []byte(`{"format":1`))), 0), ErrInvalid, "undecodable"},
		{"key version 0", seal(cat(header(), storeFrame(testBS), keyFrame(0, `{}`)), 0), ErrInvalid, "version 0"},
		{"keys not ascending", seal(cat(start(), keyFrame(1, `{}`)), 0), ErrInvalid, "strictly ascending"},
		{"key not json", seal(cat(start(), keyFrame(2, `{"a":`)), 0), ErrInvalid, "not a JSON object"},
		{"key not object", seal(cat(start(), keyFrame(2, `[1]`)), 0), ErrInvalid, "not a JSON object"},
		{"key empty", seal(cat(start(), keyFrame(2, ``)), 0), ErrInvalid, "has 0 bytes"},
		{"key too long", seal(cat(start(), keyFrame(2, `{"a":"`+strings.Repeat("x", MaxRegistration)+`"}`)), 0), ErrInvalid, "bytes, want 1 to"},
		{"key after version", seal(cat(start(), v0, endFrame(0, 0), keyFrame(2, `{}`)), 1), ErrInvalid, "after the first version"},
		{"duplicate uid", seal(cat(start(), v0, endFrame(0, 0), v0, endFrame(0, 0)), 2), ErrInvalid, "appears twice"},
		{"block size mismatch", ver(func(v *metastore.Version) { v.BlockSize = 8192 }), ErrInvalid, "block size 8192"},
		{"status incomplete", ver(func(v *metastore.Version) { v.Status = metastore.StatusIncomplete }), ErrInvalid, `status "incomplete"`},
		{"removing", ver(func(v *metastore.Version) { v.Removing = true }), ErrInvalid, "being removed"},
		{"bad uid", ver(func(v *metastore.Version) { v.UID = "X" }), ErrInvalid, "malformed version uid"},
		{"no volume", ver(func(v *metastore.Version) { v.Volume = "" }), ErrInvalid, "volume name"},
		{"long volume", ver(func(v *metastore.Version) { v.Volume = strings.Repeat("v", 256) }), ErrInvalid, "volume name"},
		{"negative size", ver(func(v *metastore.Version) { v.Size = -1 }), ErrInvalid, "size -1"},
		{"huge size", ver(func(v *metastore.Version) { v.Size = MaxVersionSize + testBS; v.BlocksDone = v.Blocks() }), ErrInvalid, "want 0 to"},
		{"blocks done", ver(func(v *metastore.Version) { v.BlocksDone = 1 }), ErrInvalid, "blocks_done"},
		{"version json", seal(cat(start(), frame('V', []byte(`{"uid":5}`))), 1), ErrInvalid, "undecodable version"},
		{"short non-last page", seal(cat(start(), versionFrame(big), pageFrame(ids(1000, block.Sparse)), pageFrame(ids(30, block.Sparse)), endFrame(2, 1030)), 1), ErrInvalid, "1000 entries, want 1024"},
		{"long last page", seal(cat(start(), versionFrame(big), pageFrame(ids(1024, block.Sparse)), pageFrame(ids(7, block.Sparse)), endFrame(2, 1031)), 1), ErrInvalid, "7 entries, want 6"},
		{"page after the last", seal(cat(start(), versionFrame(newVersion(1, testBS)), pageFrame(ids(1, block.Sparse)), pageFrame(ids(1, block.Sparse)), endFrame(2, 2)), 1), ErrInvalid, "already listed"},
		{"page of size 0 version", seal(cat(start(), v0, pageFrame(nil), endFrame(1, 0)), 1), ErrInvalid, "already listed"},
		{"end before the last page", seal(cat(start(), versionFrame(big), pageFrame(ids(1024, block.Sparse)), endFrame(1, 1024)), 1), ErrInvalid, "ends after 1024 of its 1030 blocks"},
		{"end counts", seal(cat(start(), versionFrame(newVersion(1, testBS)), pageFrame(ids(1, block.Sparse)), endFrame(1, 2)), 1), ErrInvalid, "counts 1 pages and 2 entries"},
		{"end non-minimal", seal(cat(start(), v0, frame('E', []byte{0x80, 0x00, 0x00})), 1), ErrInvalid, "malformed counts"},
		{"end extra", seal(cat(start(), v0, frame('E', []byte{0, 0, 0})), 1), ErrInvalid, "malformed counts"},
		{"missing end", seal(cat(start(), v0), 1), ErrInvalid, "or the end (E)"},
		{"record size", oneBlock(with(func(r *block.Record) { r.Size = testBS - 1 })), ErrInvalid, "plaintext size 4095"},
		{"invalid flag", oneBlock(with(func(r *block.Record) { r.Invalid = true })), nil, ""},
		{"stored size small", oneBlock(with(func(r *block.Record) { r.StoredSize = 26 })), ErrInvalid, "stored size 26"},
		{"stored size big", oneBlock(with(func(r *block.Record) { r.StoredSize = MaxStoredSize + 1 })), ErrInvalid, "stored size"},
		{"unknown compression", oneBlock(with(func(r *block.Record) { r.Compression = 2 })), ErrInvalid, "unknown compression 2"},
		{"enc version without key", oneBlock(with(func(r *block.Record) { r.EncVersion = 2 })), ErrInvalid, "encryption version 2 has no key registration"},
		{"enc version with key", oneBlock(with(func(r *block.Record) { r.EncVersion = 1 })), nil, ""},
		{"repeated id at the short last block", seal(cat(start(), versionFrame(newVersion(1, testBS+1)), pageFrame(ids(2, id), good), endFrame(1, 2)), 1), ErrInvalid, "at index 1: plaintext size 4096, the block there has 1 bytes"},
		{"records missing", seal(cat(start(), versionFrame(newVersion(1, testBS)), pageFrame([]block.ID{id}), endFrame(1, 1)), 1), ErrInvalid, "records end at entry 0"},
		{"record for sparse", seal(cat(start(), versionFrame(newVersion(1, testBS)), pageFrame([]block.ID{block.Sparse}, good), endFrame(1, 1)), 1), ErrInvalid, "28 bytes after the records"},
		{"record repeated", seal(cat(start(), versionFrame(newVersion(1, 2*testBS)), pageFrame(ids(2, id), good, good), endFrame(1, 2)), 1), ErrInvalid, "28 bytes after the records"},
		{"page encoding", seal(cat(start(), versionFrame(newVersion(1, testBS)), frame('P', []byte{2, 1}), endFrame(1, 1)), 1), ErrInvalid, "page 0 of version"},
		{"page count over 1024", seal(cat(start(), versionFrame(newVersion(1, testBS)), frame('P', []byte{1, 0x81, 0x08}), endFrame(1, 1)), 1), ErrInvalid, "bad entry count"},
		{"page count non-minimal", seal(cat(start(), versionFrame(newVersion(1, testBS)), frame('P', append([]byte{1, 0x81, 0x00}, make([]byte, 32)...)), endFrame(1, 1)), 1), ErrInvalid, "page 0 of version"},
		{"unknown kind", seal(cat(start(), frame('X', nil)), 0), ErrInvalid, "(0x58)"},
		{"trailer count", seal(cat(start(), v0, endFrame(0, 0)), 2), ErrInvalid, "counts 2 versions"},
		{"checksum", func() []byte { b := bytes.Clone(sealedStream); b[len(b)-1] ^= 1; return b }(), ErrInvalid, "checksum mismatch"},
		{"trailer short", cat(start(), frame('T', []byte{0, 1, 2})), ErrInvalid, "malformed trailer"},
		{"extra bytes after T", cat(sealedStream, []byte{0}), ErrInvalid, fmt.Sprintf("bytes after the trailer at byte %d", len(sealedStream))},
		{"length over the limit", cat(start(), []byte{'V', 0x81, 0x80, 0x40}), ErrInvalid, "payload of 1048577 bytes"},
		{"length of 4 bytes", cat(start(), []byte{'V', 0x80, 0x80, 0x80, 0x01}), ErrInvalid, "length over"},
		{"huge length", cat(start(), []byte{'V'}, binary.AppendUvarint(nil, 1<<62)), ErrInvalid, "length over"},
		{"length non-minimal", cat(start(), []byte{'V', 0x80, 0x00}), ErrInvalid, "not minimally encoded"},
		{"length at the limit, truncated", cat(start(), []byte{'V', 0x80, 0x80, 0x40}, make([]byte, 100)), io.ErrUnexpectedEOF, "ends at byte"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readAll(tc.data)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, tc.want) || !strings.Contains(fmt.Sprint(err), tc.substr) {
				t.Fatalf("got %v, want %v containing %q", err, tc.want, tc.substr)
			}
			if !errors.Is(tc.want, ErrNewerFormat) && !errors.Is(err, ErrInvalid) {
				t.Fatalf("%v does not wrap ErrInvalid", err)
			}
		})
	}
}

func TestRejectUnknownFlags(t *testing.T) {
	data := oneBlock(block.Record{ID: idOf(9, 9), Size: testBS, StoredSize: 100})
	// The flags byte is the last byte of the P frame: the E frame (4 bytes)
	// and the trailer (2 + 1 + 32) follow it.
	i := len(data) - 4 - 35 - 1
	for _, f := range []byte{0x02, 0x81} {
		bad := bytes.Clone(data)
		bad[i] = f
		bad = seal(bad[:len(bad)-35], 1)
		if _, err := readAll(bad); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "unknown flags") {
			t.Fatalf("flags %#x: %v", f, err)
		}
	}
}

func TestErrorNamesFrame(t *testing.T) {
	big := newVersion(2, (blockmap.PageEntries+6)*testBS)
	p := make([]block.ID, blockmap.PageEntries)
	data := seal(cat(start(), versionFrame(big), pageFrame(p), pageFrame(p[:5]), endFrame(2, 1029)), 1)
	_, err := readAll(data)
	want := fmt.Sprintf("frame 5 (P) at byte %d: page 1 of version %s: 5 entries, want 6", len(start())+len(versionFrame(big))+len(pageFrame(p)), big.UID)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("got %v\nwant ...%s", err, want)
	}
}

// A length that the stream does not back with bytes costs no more than the
// bytes that came (in chunks), never the announced megabyte.
func TestHugeLengthAllocatesLittle(t *testing.T) {
	data := cat(start(), []byte{'V', 0x80, 0x80, 0x40}, make([]byte, 1000))
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range 10 {
		if _, err := readAll(data); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatal(err)
		}
	}
	runtime.ReadMemStats(&after)
	if per := (after.TotalAlloc - before.TotalAlloc) / 10; per > 512<<10 {
		t.Fatalf("%d bytes allocated per read", per)
	}
}

// An I/O error of the source is reported as such, not as invalid data.
func TestReaderIOError(t *testing.T) {
	data, err := writeAll(smallContent())
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	r, err := NewReader(io.MultiReader(bytes.NewReader(data[:len(data)/2]), iotest{boom}))
	if err == nil {
		for err == nil {
			_, err = r.NextVersion()
		}
	}
	if !errors.Is(err, boom) || errors.Is(err, ErrInvalid) {
		t.Fatalf("got %v", err)
	}
	if _, err2 := r.NextVersion(); err2 != err {
		t.Fatalf("error not sticky: %v", err2)
	}
}

type iotest struct{ err error }

func (e iotest) Read([]byte) (int, error) { return 0, e.err }

func TestWriterRefuses(t *testing.T) {
	id, id2 := idOf(1, 1), idOf(1, 2)
	rec := recordOf(id, testBS)
	rec.EncVersion = 0
	rec2 := recordOf(id2, testBS)
	rec2.EncVersion = 0
	full := func(n int) ([]block.ID, []block.Record) {
		ids := make([]block.ID, n)
		return ids, make([]block.Record, n)
	}
	for _, tc := range []struct {
		name   string
		substr string
		run    func(w *Writer) error
	}{
		{"ids and recs", "1 entries and 2 records", func(w *Writer) error {
			_ = w.BeginVersion(newVersion(1, testBS))
			return w.Page([]block.ID{id}, []block.Record{rec, rec})
		}},
		{"record of another id", "its record names", func(w *Writer) error {
			_ = w.BeginVersion(newVersion(1, testBS))
			return w.Page([]block.ID{id}, []block.Record{rec2})
		}},
		{"too many entries", "has 1025 entries, want 1024", func(w *Writer) error {
			_ = w.BeginVersion(newVersion(1, 2000*testBS))
			ids, recs := full(1025)
			return w.Page(ids, recs)
		}},
		{"page after the last", "after all its 1 blocks", func(w *Writer) error {
			_ = w.BeginVersion(newVersion(1, testBS))
			_ = w.Page([]block.ID{id}, []block.Record{rec})
			return w.Page([]block.ID{id}, []block.Record{rec})
		}},
		{"short non-last page", "has 5 entries, want 1024", func(w *Writer) error {
			_ = w.BeginVersion(newVersion(1, 2000*testBS))
			ids, recs := full(5)
			return w.Page(ids, recs)
		}},
		{"size rule", "plaintext size 4096, the block there has 1 bytes", func(w *Writer) error {
			_ = w.BeginVersion(newVersion(1, 1))
			return w.Page([]block.ID{id}, []block.Record{rec})
		}},
		{"repeated id at the short last block", "at index 1", func(w *Writer) error {
			_ = w.BeginVersion(newVersion(1, testBS+1))
			return w.Page([]block.ID{id, id}, []block.Record{rec, rec})
		}},
		{"differing records", "differing records", func(w *Writer) error {
			_ = w.BeginVersion(newVersion(1, 2*testBS))
			r := rec
			r.StoredSize++
			return w.Page([]block.ID{id, id}, []block.Record{rec, r})
		}},
		{"unregistered encryption version", "encryption version 7", func(w *Writer) error {
			_ = w.BeginVersion(newVersion(1, testBS))
			r := rec
			r.EncVersion = 7
			return w.Page([]block.ID{id}, []block.Record{r})
		}},
		{"flags-free but bad compression", "unknown compression", func(w *Writer) error {
			_ = w.BeginVersion(newVersion(1, testBS))
			r := rec
			r.Compression = 9
			return w.Page([]block.ID{id}, []block.Record{r})
		}},
		{"stored size", "stored size 0", func(w *Writer) error {
			_ = w.BeginVersion(newVersion(1, testBS))
			r := rec
			r.StoredSize = 0
			return w.Page([]block.ID{id}, []block.Record{r})
		}},
		{"end before all pages", "ends after 0 of its 1 blocks", func(w *Writer) error {
			_ = w.BeginVersion(newVersion(1, testBS))
			return w.EndVersion()
		}},
		{"page outside a version", "outside a version", func(w *Writer) error {
			return w.Page([]block.ID{id}, []block.Record{rec})
		}},
		{"end outside a version", "outside a version", func(w *Writer) error { return w.EndVersion() }},
		{"close inside a version", "before version", func(w *Writer) error {
			_ = w.BeginVersion(newVersion(1, 0))
			return w.Close()
		}},
		{"version inside a version", "before version", func(w *Writer) error {
			_ = w.BeginVersion(newVersion(1, 0))
			return w.BeginVersion(newVersion(2, 0))
		}},
		{"incomplete", `status "incomplete"`, func(w *Writer) error {
			v := newVersion(1, 0)
			v.Status = metastore.StatusIncomplete
			return w.BeginVersion(v)
		}},
		{"block size", "block size 8192", func(w *Writer) error {
			v := newVersion(1, 0)
			v.BlockSize = 8192
			return w.BeginVersion(v)
		}},
		{"blocks done", "blocks_done", func(w *Writer) error {
			v := newVersion(1, testBS)
			v.BlocksDone = 0
			return w.BeginVersion(v)
		}},
		{"volume grown by invalid UTF-8", "volume name of 765 bytes", func(w *Writer) error {
			v := newVersion(1, 0)
			v.Volume = strings.Repeat("\xff", 255)
			return w.BeginVersion(v)
		}},
		{"duplicate uid", "already in the stream", func(w *Writer) error {
			_ = w.BeginVersion(newVersion(1, 0))
			_ = w.EndVersion()
			return w.BeginVersion(newVersion(1, 0))
		}},
		{"closed", "closed", func(w *Writer) error {
			_ = w.Close()
			return w.BeginVersion(newVersion(1, 0))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, err := NewWriter(io.Discard, testStore(), []KeyReg{{1, []byte(`{}`)}})
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.run(w); err == nil || !strings.Contains(err.Error(), tc.substr) {
				t.Fatalf("got %v, want an error containing %q", err, tc.substr)
			}
		})
	}
	for _, tc := range []struct {
		name string
		s    StoreInfo
		keys []KeyReg
	}{
		{"block size", StoreInfo{BlockSize: 5000}, nil},
		{"block size zero", StoreInfo{}, nil},
		{"written by", StoreInfo{BlockSize: testBS, WrittenBy: strings.Repeat("x", MaxWrittenBy+1)}, nil},
		{"written by UTF-8", StoreInfo{BlockSize: testBS, WrittenBy: "\xff"}, nil},
		{"key version 0", testStore(), []KeyReg{{0, []byte(`{}`)}}},
		{"key twice", testStore(), []KeyReg{{2, []byte(`{}`)}, {2, []byte(`{}`)}}},
		{"key not JSON", testStore(), []KeyReg{{2, []byte(`{`)}}},
	} {
		if _, err := NewWriter(io.Discard, tc.s, tc.keys); err == nil {
			t.Errorf("NewWriter %s: no error", tc.name)
		}
	}
}

// A refused call writes nothing: the stream goes on and stays valid.
func TestWriterUsableAfterRefusal(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewWriter(&buf, testStore(), nil)
	if err != nil {
		t.Fatal(err)
	}
	id := idOf(1, 1)
	rec := block.Record{ID: id, Size: testBS, StoredSize: 99}
	v := newVersion(1, testBS)
	if err := w.BeginVersion(v); err != nil {
		t.Fatal(err)
	}
	n := w.Written()
	if err := w.Page([]block.ID{id}, []block.Record{{ID: id, Size: 1, StoredSize: 99}}); err == nil {
		t.Fatal("bad size accepted")
	}
	if w.Written() != n {
		t.Fatal("a refused page was written")
	}
	if err := w.Page([]block.ID{id}, []block.Record{rec}); err != nil {
		t.Fatal(err)
	}
	if err := w.EndVersion(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	c, err := readAll(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(c.versions) != 1 || c.versions[0].pages[0].Records[0] != rec {
		t.Fatalf("%+v", c.versions)
	}
}

type failWriter struct{ after int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.after < len(p) {
		n := max(f.after, 0)
		f.after = 0
		return n, errors.New("disk full")
	}
	f.after -= len(p)
	return len(p), nil
}

func TestWriterIOErrorIsFinal(t *testing.T) {
	w, err := NewWriter(&failWriter{after: 200}, testStore(), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = w.BeginVersion(newVersion(1, 0))
	if err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Fatalf("got %v", err)
	}
	if err2 := w.Close(); err2 != err {
		t.Fatalf("error not final: %v", err2)
	}
	if w.Written() != 200 {
		t.Fatalf("Written() = %d", w.Written())
	}
}

// fixTrailer returns data with the checksum of a trailing T frame
// recomputed (nil if data does not end with one), so the fuzzer reaches the
// accepting path with mutated content.
func fixTrailer(data []byte) []byte {
	for n := 1; n <= binary.MaxVarintLen64; n++ {
		l := n + 32
		pos := len(data) - 2 - l
		if pos < len(Magic)+1 {
			break
		}
		if data[pos] == 'T' && data[pos+1] == byte(l) {
			out := bytes.Clone(data)
			sum := blake3.Sum256(out[:pos])
			copy(out[pos+2+n:], sum[:])
			return out
		}
	}
	return nil
}

func FuzzReader(f *testing.F) {
	small, err := writeAll(smallContent())
	if err != nil {
		f.Fatal(err)
	}
	f.Add(small)
	one := &content{store: testStore(), keys: testKeys()}
	one.versions = []versionContent{testContent().versions[3]}
	if b, err := writeAll(one); err == nil {
		f.Add(b)
	}
	f.Add(oneBlock(block.Record{ID: idOf(9, 9), Size: testBS, StoredSize: 100, EncVersion: 1, Invalid: true}))
	f.Add(seal(cat(start(), versionFrame(newVersion(0, 0)), endFrame(0, 0)), 1))
	for _, i := range []int{5, 6, 20, len(small) / 2, len(small) - 40} {
		b := bytes.Clone(small)
		b[i] ^= 0x04
		f.Add(b)
		f.Add(small[:i])
	}
	check := func(t *testing.T, data []byte) {
		c, err := readAll(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNewerFormat) {
				t.Fatalf("error wraps neither sentinel: %v", err)
			}
			return
		}
		again, err := writeAll(c)
		if err != nil {
			t.Fatalf("re-encoding accepted content: %v", err)
		}
		c2, err := readAll(again)
		if err != nil {
			t.Fatalf("re-encoded stream refused: %v", err)
		}
		if err := sameContent(c, c2); err != nil {
			t.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		check(t, data)
		if fixed := fixTrailer(data); fixed != nil {
			check(t, fixed)
		}
	})
}

// BenchmarkWriteRead writes and reads back a 1 TiB version at 4 MiB blocks
// (262144 distinct blocks), and reports the stream's size.
func BenchmarkWriteRead(b *testing.B) {
	const bs = 4 << 20
	const n = 1 << 40 / bs
	rng := rand.New(rand.NewPCG(1, 2))
	ids := make([]block.ID, n)
	recs := make([]block.Record, n)
	for i := range ids {
		for j := 0; j < block.IDSize; j += 8 {
			binary.LittleEndian.PutUint64(ids[i][j:], rng.Uint64())
		}
		recs[i] = block.Record{ID: ids[i], Size: bs, StoredSize: bs/2 + 100, Compression: block.CompressionZstd}
		binary.LittleEndian.PutUint64(recs[i].Name[:], rng.Uint64())
	}
	store := StoreInfo{StoreID: testStoreID, BlockSize: bs, WrittenBy: "bench"}
	v := &metastore.Version{UID: testUID(1), Volume: "vm-1-disk-0", Date: time.Now(), Size: 1 << 40, BlockSize: bs, Status: metastore.StatusValid, BlocksDone: n}
	var buf bytes.Buffer
	buf.Grow(16 << 20)
	var size int64
	b.ReportAllocs()
	for b.Loop() {
		buf.Reset()
		w, err := NewWriter(&buf, store, nil)
		if err != nil {
			b.Fatal(err)
		}
		if err := w.BeginVersion(v); err != nil {
			b.Fatal(err)
		}
		for p := 0; p < n; p += blockmap.PageEntries {
			if err := w.Page(ids[p:p+blockmap.PageEntries], recs[p:p+blockmap.PageEntries]); err != nil {
				b.Fatal(err)
			}
		}
		if err := w.EndVersion(); err != nil {
			b.Fatal(err)
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
		size = w.Written()

		r, err := NewReader(bytes.NewReader(buf.Bytes()))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := r.NextVersion(); err != nil {
			b.Fatal(err)
		}
		entries := 0
		for {
			p, err := r.NextPage()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			entries += len(p.IDs)
		}
		if _, err := r.NextVersion(); err != io.EOF || entries != n {
			b.Fatalf("%v, %d entries", err, entries)
		}
	}
	b.SetBytes(size)
	b.ReportMetric(float64(size), "bytes/version")
}
