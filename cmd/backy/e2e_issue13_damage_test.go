package main

// Issue 13 item 5: a damaged metastore never makes backy panic. Each
// damage case (byte offsets in the meta pages, the freelist, branch and
// leaf pages of several buckets, truncations at several sizes, page
// scribbles) is applied to a copy of one store, and every command either
// works or fails with exit 70 and one line naming the metastore and
// 'backy rebuild-metastore'; rebuild-metastore then brings every version
// back.

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// e2eBoltPage is a page of a bbolt file, as the tree reaches it.
type e2eBoltPage struct {
	id     uint64
	typ    string // "branch", "leaf"
	bucket string // the bucket whose tree holds it ("" for the root bucket)
	count  int
}

// e2eBolt is what the damage cases need to know of a bbolt file.
type e2eBolt struct {
	ps       int
	cur      int // the meta page bbolt uses (0 or 1)
	freelist uint64
	hwm      uint64
	pages    []e2eBoltPage
}

const e2eBoltHdr = 16

func e2eBoltMetaSum(m []byte) uint64 {
	h := fnv.New64a()
	h.Write(m[:56])
	return h.Sum64()
}

// e2eBoltParse walks the tree of a bbolt file from its current meta page.
func e2eBoltParse(t *testing.T, d []byte) e2eBolt {
	t.Helper()
	le := binary.LittleEndian
	const ps = 4096
	l := e2eBolt{ps: ps}
	var txid [2]uint64
	for i := range 2 {
		m := d[i*ps+e2eBoltHdr:]
		if le.Uint32(m) != 0xED0CDAED || le.Uint64(m[56:]) != e2eBoltMetaSum(m) || le.Uint32(m[8:]) != ps {
			t.Fatalf("meta page %d of the fixture is not valid", i)
		}
		txid[i] = le.Uint64(m[48:])
	}
	if txid[1] > txid[0] {
		l.cur = 1
	}
	m := d[l.cur*ps+e2eBoltHdr:]
	root := le.Uint64(m[16:])
	l.freelist, l.hwm = le.Uint64(m[32:]), le.Uint64(m[40:])
	var walk func(id uint64, bucket string)
	walk = func(id uint64, bucket string) {
		p := d[id*ps:]
		flags, count := le.Uint16(p[8:]), int(le.Uint16(p[10:]))
		switch flags {
		case 0x01:
			l.pages = append(l.pages, e2eBoltPage{id, "branch", bucket, count})
			for i := range count {
				walk(le.Uint64(p[e2eBoltHdr+i*16+8:]), bucket)
			}
		case 0x02:
			l.pages = append(l.pages, e2eBoltPage{id, "leaf", bucket, count})
			for i := range count {
				e := p[e2eBoltHdr+i*16:]
				eflags, pos, ksize := le.Uint32(e), int(le.Uint32(e[4:])), int(le.Uint32(e[8:]))
				if eflags&1 == 0 {
					continue
				}
				key := string(e[pos : pos+ksize])
				if r := le.Uint64(e[pos+ksize:]); r != 0 { // not inline
					walk(r, key)
				}
			}
		default:
			t.Fatalf("page %d of the fixture has flags %#x", id, flags)
		}
	}
	walk(root, "")
	return l
}

// page returns the first page of the bucket's tree of type typ.
func (l e2eBolt) page(t *testing.T, bucket, typ string) e2eBoltPage {
	t.Helper()
	for _, p := range l.pages {
		if p.bucket == bucket && p.typ == typ {
			return p
		}
	}
	t.Fatalf("the fixture has no %s page in bucket %q (pages: %+v)", typ, bucket, l.pages)
	return e2eBoltPage{}
}

// e2eDamage is one way to damage a metastore file.
type e2eDamage struct {
	name string
	do   func(t *testing.T, d []byte, l e2eBolt) []byte
}

func e2eDamageCases() []e2eDamage {
	le := binary.LittleEndian
	ps := 4096
	bothMeta := func(field int) func(*testing.T, []byte, e2eBolt) []byte {
		return func(t *testing.T, d []byte, l e2eBolt) []byte {
			for i := range 2 {
				d[i*ps+e2eBoltHdr+field] ^= 0x5a
			}
			return d
		}
	}
	// curMeta sets a field of the meta page bbolt uses and fixes its
	// checksum, so bbolt takes it as valid.
	curMeta := func(field int, v func(l e2eBolt) uint64) func(*testing.T, []byte, e2eBolt) []byte {
		return func(t *testing.T, d []byte, l e2eBolt) []byte {
			m := d[l.cur*ps+e2eBoltHdr:]
			le.PutUint64(m[field:], v(l))
			le.PutUint64(m[56:], e2eBoltMetaSum(m))
			return d
		}
	}
	scribble := func(bucket, typ string, seed uint64) func(*testing.T, []byte, e2eBolt) []byte {
		return func(t *testing.T, d []byte, l e2eBolt) []byte {
			p := l.page(t, bucket, typ)
			copy(d[int(p.id)*ps+e2eBoltHdr:(int(p.id)+1)*ps], e2eRandom(ps-e2eBoltHdr, seed))
			return d
		}
	}
	// field patches a page header field (off 0 id, 8 flags, 10 count) or,
	// with elem >= 0, a field of every element (branch: 8 pgid; leaf: 4
	// pos, 8 ksize, 12 vsize).
	field := func(bucket, typ string, elem, off int, v uint64, size int) func(*testing.T, []byte, e2eBolt) []byte {
		return func(t *testing.T, d []byte, l e2eBolt) []byte {
			p := l.page(t, bucket, typ)
			base := int(p.id) * ps
			put := func(o int) {
				switch size {
				case 2:
					le.PutUint16(d[o:], uint16(v))
				case 4:
					le.PutUint32(d[o:], uint32(v))
				default:
					le.PutUint64(d[o:], v)
				}
			}
			if elem < 0 {
				put(base + off)
				return d
			}
			for i := range p.count {
				put(base + e2eBoltHdr + i*16 + off)
			}
			return d
		}
	}
	trunc := func(n func(l e2eBolt, size int) int) func(*testing.T, []byte, e2eBolt) []byte {
		return func(t *testing.T, d []byte, l e2eBolt) []byte { return d[:n(l, len(d))] }
	}
	return []e2eDamage{
		{"meta pages: both magics", bothMeta(0)},
		{"meta pages: both versions", bothMeta(4)},
		{"meta pages: both checksums", bothMeta(56)},
		{"meta pages: both page sizes", bothMeta(8)},
		{"meta: root page zeroed", curMeta(16, func(e2eBolt) uint64 { return 0 })},
		{"meta: root page beyond the high water mark", curMeta(16, func(l e2eBolt) uint64 { return l.hwm + 5 })},
		{"meta: freelist page beyond the high water mark", curMeta(32, func(l e2eBolt) uint64 { return l.hwm + 9 })},
		{"meta: high water mark beyond the file", curMeta(40, func(l e2eBolt) uint64 { return l.hwm * 4 })},
		{"freelist: scribbled", func(t *testing.T, d []byte, l e2eBolt) []byte {
			copy(d[int(l.freelist)*ps+e2eBoltHdr:(int(l.freelist)+1)*ps], e2eRandom(ps-e2eBoltHdr, 7))
			le.PutUint16(d[int(l.freelist)*ps+10:], 200)
			return d
		}},
		{"freelist: count beyond its page", func(t *testing.T, d []byte, l e2eBolt) []byte {
			le.PutUint16(d[int(l.freelist)*ps+10:], 0xfff0)
			return d
		}},
		{"root page: type zeroed", field("", "leaf", -1, 8, 0, 2)},
		{"root page: scribbled", scribble("", "leaf", 11)},
		{"versions leaf: scribbled", scribble("versions", "leaf", 12)},
		{"versions leaf: element offsets beyond the page", field("versions", "leaf", 0, 4, 1<<30, 4)},
		{"versions leaf: value sizes beyond the page", field("versions", "leaf", 0, 12, 1<<31, 4)},
		{"blocks branch: scribbled", scribble("blocks", "branch", 13)},
		{"blocks branch: children beyond the file", field("blocks", "branch", 0, 8, 1<<36, 8)},
		{"blocks branch: children beyond the high water mark", func(t *testing.T, d []byte, l e2eBolt) []byte {
			return field("blocks", "branch", 0, 8, l.hwm+3, 8)(t, d, l)
		}},
		{"blocks leaf: zeroed", func(t *testing.T, d []byte, l e2eBolt) []byte {
			p := l.page(t, "blocks", "leaf")
			clear(d[int(p.id)*ps : (int(p.id)+1)*ps])
			return d
		}},
		{"blocks leaf: another page id", func(t *testing.T, d []byte, l e2eBolt) []byte {
			p := l.page(t, "blocks", "leaf")
			return field("blocks", "leaf", -1, 0, p.id+1, 8)(t, d, l)
		}},
		{"pages branch: scribbled", scribble("pages", "branch", 14)},
		{"pages leaf: type made branch", field("pages", "leaf", -1, 8, 1, 2)},
		{"truncated to 0 bytes", trunc(func(e2eBolt, int) int { return 0 })},
		{"truncated to 100 bytes", trunc(func(e2eBolt, int) int { return 100 })},
		{"truncated to 4 KiB", trunc(func(e2eBolt, int) int { return 4096 })},
		{"truncated to 3 pages", trunc(func(e2eBolt, int) int { return 3 * 4096 })},
		{"truncated to half", trunc(func(_ e2eBolt, n int) int { return n / 2 })},
		{"truncated by its last used page", trunc(func(l e2eBolt, _ int) int { return int(l.hwm-1) * 4096 })},
		{"truncated mid-page", trunc(func(l e2eBolt, _ int) int { return int(l.hwm-1)*4096 + 1000 })},
	}
}

// TestMetastoreDamage applies every damage case to a copy of one store
// and runs ls, stats, scrub, deep-scrub, restore and backup on it.
func TestMetastoreDamage(t *testing.T) {
	b := e2eNewBox(t)
	const bs = 64 * e2eKiB
	b.ok("init", "--block-size", fmt.Sprint(bs))
	// 3 images of 40 blocks, each backed up twice (a few blocks changed):
	// enough block records for branch pages.
	var uids []string
	for i := range 3 {
		img := b.path(fmt.Sprintf("img%d.img", i))
		e2eRandomFile(t, img, 40*bs, uint64(100+i))
		uids = append(uids, b.backup(img, fmt.Sprintf("vol%d", i)).UID)
		e2eCopy(t, img, b.path(fmt.Sprintf("first%d.img", i)))
		e2eScribble(t, img, 5*bs, 3*bs, uint64(200+i))
		uids = append(uids, b.backup(img, fmt.Sprintf("vol%d", i)).UID)
	}
	dbPath := filepath.Join(b.home, "backy.db")
	orig := e2eReadFile(t, dbPath)
	layout := e2eBoltParse(t, orig)
	t.Logf("fixture: %d bytes, high water mark %d pages, freelist page %d, %d pages in the tree", len(orig), layout.hwm, layout.freelist, len(layout.pages))
	restoreFrom := b.path("img0.img")

	cases := e2eDamageCases()
	if len(cases) < 20 {
		t.Fatalf("%d damage cases, the issue asks for at least 20", len(cases))
	}
	for ci, dc := range cases {
		t.Run(dc.name, func(t *testing.T) {
			damaged := dc.do(t, slices.Clone(orig), layout)
			// Each command on its own copy of the damaged store, so that
			// none sees what another did to it.
			clone := func(name string) (*e2eBox, string) {
				home := b.path(fmt.Sprintf("case%02d-%s", ci, name))
				e2eCloneStore(t, b.home, home)
				db := filepath.Join(home, "backy.db")
				if err := os.WriteFile(db, damaged, 0o600); err != nil {
					t.Fatal(err)
				}
				c := b.with(t)
				c.setHome(home)
				return c, db
			}
			cmds := [][]string{
				{"ls"},
				{"stats"},
				{"scrub", "--all"},
				{"deep-scrub", "--all"},
				{"restore", uids[1], b.path(fmt.Sprintf("case%02d-restored.img", ci))},
				{"backup", restoreFrom, "vol0"},
			}
			noticed := 0
			for _, args := range cmds {
				c, db := clone(args[0])
				r := c.run(args...)
				out := r.stdout + r.stderr
				if strings.Contains(out, "panic") || strings.Contains(out, "goroutine") {
					t.Errorf("backy panicked:\n%v", r)
					continue
				}
				switch r.code {
				case 0:
					continue
				case exitIntegrity:
					noticed++
				default:
					t.Errorf("want exit 0 or %d:\n%v", exitIntegrity, r)
					continue
				}
				if l := e2eLines(r.stderr); len(l) != 1 || !strings.HasPrefix(l[0], "backy: ") ||
					!strings.Contains(l[0], db) || !strings.Contains(l[0], "backy rebuild-metastore") {
					t.Errorf("want one stderr line naming %s and 'backy rebuild-metastore':\n%v", db, r)
				}
			}
			if noticed == 0 {
				t.Errorf("no command noticed the damage")
			}
			// What the message says to do works.
			c, _ := clone("rebuild")
			if r := c.run("rebuild-metastore"); r.code != 0 {
				t.Fatalf("rebuild-metastore after the damage:\n%v", r)
			}
			listed := map[string]string{}
			for _, v := range c.ls() {
				listed[v.UID] = v.Status
			}
			for _, uid := range uids {
				if listed[uid] != "valid" {
					t.Errorf("after rebuild-metastore, %s is %q, want valid (listed: %v)", uid, listed[uid], listed)
				}
			}
			c.restore(uids[0], b.path("first0.img"))
		})
	}
}

// e2eCloneStore copies the default store at from to to: the metastore as
// a file, the data directory's objects as hard links (objects are never
// changed in place, and each copy's own writes make new files).
func e2eCloneStore(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		switch {
		case d.IsDir():
			return os.MkdirAll(dst, 0o700)
		case strings.HasPrefix(rel, "data"+string(filepath.Separator)):
			return os.Link(p, dst)
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(dst, b, 0o600)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}
