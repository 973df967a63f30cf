package hints

import (
	"errors"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const (
	mib = 1 << 20
	gib = 1 << 30
)

var parseOK = []struct {
	name string
	in   string
	size int64
	want []Extent
}{
	{"empty array", `[]`, 100, nil},
	{"empty array pretty", "[\n]\n", 0, nil},
	{"empty array, empty source", `[]`, 0, nil},
	{"backy2 example", `[{"offset":0,"length":4194304,"exists":"true"},{"offset":8388608,"length":1048576,"exists":"false"}]`, 16 * mib,
		[]Extent{{0, 4 * mib, true}, {8 * mib, mib, false}}},
	{"pretty-printed", "[\n  {\n    \"offset\": 0,\n    \"length\": 4096,\n    \"exists\": \"true\"\n  },\n  {\n    \"offset\": 8192,\n    \"length\": 4096,\n    \"exists\": \"false\"\n  }\n]\n", 1 * mib,
		[]Extent{{0, 4096, true}, {8192, 4096, false}}},
	{"bool exists", `[{"offset":1,"length":2,"exists":true},{"offset":3,"length":4,"exists":false}]`, 10,
		[]Extent{{1, 2, true}, {3, 4, false}}},
	{"escaped string exists", `[{"offset":1,"length":2,"exists":"\u0074rue"}]`, 10, []Extent{{1, 2, true}}},
	{"unknown fields ignored", `[{"offset":1,"length":2,"exists":true,"extra":{"a":[1,2.5,null]},"x":"y"}]`, 10,
		[]Extent{{1, 2, true}}},
	{"field order", `[{"exists":"false","length":2,"offset":1}]`, 10, []Extent{{1, 2, false}}},
	{"zero length dropped", `[{"offset":5,"length":0,"exists":true},{"offset":1,"length":1,"exists":true}]`, 10,
		[]Extent{{1, 1, true}}},
	{"zero length at the end", `[{"offset":10,"length":0,"exists":true}]`, 10, nil},
	{"overlapping and unordered kept as is", `[{"offset":8,"length":2,"exists":true},{"offset":0,"length":9,"exists":false},{"offset":0,"length":9,"exists":false}]`, 10,
		[]Extent{{8, 2, true}, {0, 9, false}, {0, 9, false}}},
	{"ends exactly at source size", `[{"offset":4096,"length":4096,"exists":true}]`, 8192, []Extent{{4096, 4096, true}}},
	{"negative zero", `[{"offset":-0,"length":1,"exists":true}]`, 1, []Extent{{0, 1, true}}},
	{"max int64", `[{"offset":9223372036854775806,"length":1,"exists":true}]`, math.MaxInt64,
		[]Extent{{math.MaxInt64 - 1, 1, true}}},
	{"max int64 end", `[{"offset":0,"length":9223372036854775807,"exists":true}]`, math.MaxInt64,
		[]Extent{{0, math.MaxInt64, true}}},
	{"whitespace around", " \t\r\n[ { \"offset\" : 0 , \"length\" : 1 , \"exists\" : true } ] \n\n", 1, []Extent{{0, 1, true}}},
}

func TestParseOK(t *testing.T) {
	for _, tc := range parseOK {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(strings.NewReader(tc.in), tc.size)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("Parse = %v, want %v", got, tc.want)
			}
		})
	}
}

var parseBad = []struct {
	name string
	in   string
	size int64
	msg  []string // substrings of the error message
}{
	{"empty input", ``, 10, []string{"empty document"}},
	{"only whitespace", " \n ", 10, []string{"empty document"}},
	{"not JSON", `hello`, 10, []string{"not valid JSON"}},
	{"object document", `{"offset":0,"length":1,"exists":true}`, 10, []string{"document is an object", "array"}},
	{"number document", `42`, 10, []string{"document is a number"}},
	{"string document", `"[]"`, 10, []string{"document is a string"}},
	{"null document", `null`, 10, []string{"document is null"}},
	{"truncated array", `[{"offset":0,"length":1,"exists":true}`, 10, []string{"unexpected end of input"}},
	{"truncated object", `[{"offset":0,"length":1,`, 10, []string{"hint 0", "unexpected end of input"}},
	{"bad JSON in element", `[{"offset":0,,}]`, 10, []string{"hint 0", "not valid JSON"}},
	{"missing comma", `[{"offset":0,"length":1,"exists":true} {"offset":0,"length":1,"exists":true}]`, 10, []string{"hint 1", "not valid JSON"}},
	{"leading comma", `[,{"offset":0,"length":1,"exists":true}]`, 10, []string{"hint 0", "not valid JSON"}},
	{"trailing comma", `[{"offset":0,"length":1,"exists":true},]`, 10, []string{"hint 1", "not valid JSON"}},
	{"number element", `[{"offset":0,"length":1,"exists":true},1]`, 10, []string{"hint 1 is a number", "object"}},
	{"null element", `[null]`, 10, []string{"hint 0 is null"}},
	{"array element", `[[0,1,true]]`, 10, []string{"hint 0 is an array"}},
	{"string element", `["x"]`, 10, []string{"hint 0 is a string"}},
	{"missing offset", `[{"length":1,"exists":true}]`, 10, []string{"hint 0", `missing "offset"`}},
	{"missing length", `[{"offset":0,"length":1,"exists":true},{"offset":1,"exists":true}]`, 10, []string{"hint 1", `missing "length"`}},
	{"missing exists", `[{"offset":0,"length":1}]`, 10, []string{"hint 0", `missing "exists"`}},
	{"wrong case key", `[{"Offset":0,"length":1,"exists":true}]`, 10, []string{"hint 0", `missing "offset"`}},
	{"null offset", `[{"offset":null,"length":1,"exists":true}]`, 10, []string{"hint 0", "offset is null"}},
	{"string offset", `[{"offset":"0","length":1,"exists":true}]`, 10, []string{"hint 0", "offset is a string"}},
	{"negative offset", `[{"offset":0,"length":1,"exists":true},{"offset":0,"length":1,"exists":true},{"offset":0,"length":1,"exists":true},{"offset":-5,"length":1,"exists":true}]`, 10,
		[]string{"hint 3: offset -5 is negative"}},
	{"negative length", `[{"offset":0,"length":-1,"exists":true}]`, 10, []string{"hint 0: length -1 is negative"}},
	{"huge negative offset", `[{"offset":-99999999999999999999,"length":1,"exists":true}]`, 10, []string{"hint 0: offset -99999999999999999999 is negative"}},
	{"float offset", `[{"offset":1.5,"length":1,"exists":true}]`, 10, []string{"hint 0: offset 1.5 is not an integer"}},
	{"float zero fraction", `[{"offset":1.0,"length":1,"exists":true}]`, 10, []string{"hint 0: offset 1.0 is not an integer"}},
	{"exponent length", `[{"offset":0,"length":1e3,"exists":true}]`, 10000, []string{"hint 0: length 1e3 is not an integer"}},
	{"offset too large", `[{"offset":9223372036854775808,"length":0,"exists":true}]`, math.MaxInt64, []string{"hint 0: offset 9223372036854775808 is too large"}},
	{"overflow", `[{"offset":9223372036854775807,"length":1,"exists":true}]`, math.MaxInt64, []string{"hint 0: offset 9223372036854775807 + length 1 overflows int64"}},
	{"overflow both large", `[{"offset":4611686018427387904,"length":4611686018427387904,"exists":false}]`, math.MaxInt64, []string{"hint 0", "overflows int64"}},
	{"one byte past the end", `[{"offset":4096,"length":4097,"exists":true}]`, 8192, []string{"hint 0 ends at byte 8193, past the end of the source (8192 bytes)"}},
	{"past the end, index 7", `[` + strings.Repeat(`{"offset":0,"length":1,"exists":true},`, 7) + `{"offset":10,"length":1,"exists":true}]`, 10,
		[]string{"hint 7 ends at byte 11, past the end of the source (10 bytes)"}},
	{"zero length past the end", `[{"offset":11,"length":0,"exists":true}]`, 10, []string{"hint 0 ends at byte 11, past the end"}},
	{"anything on empty source", `[{"offset":0,"length":1,"exists":false}]`, 0, []string{"hint 0 ends at byte 1, past the end of the source (0 bytes)"}},
	{"exists yes", `[{"offset":0,"length":1,"exists":"yes"}]`, 10, []string{"hint 0", `exists "yes"`}},
	{"exists True", `[{"offset":0,"length":1,"exists":"True"}]`, 10, []string{"hint 0", `exists "True"`}},
	{"exists number", `[{"offset":0,"length":1,"exists":1}]`, 10, []string{"hint 0", "exists is a number"}},
	{"exists null", `[{"offset":0,"length":1,"exists":null}]`, 10, []string{"hint 0", "exists is null"}},
	{"exists object", `[{"offset":0,"length":1,"exists":{}}]`, 10, []string{"hint 0", "exists is an object"}},
	{"trailing garbage", `[]x`, 10, []string{"trailing data after the array"}},
	{"trailing second array", "[]\n[]", 10, []string{"trailing data after the array"}},
	{"trailing bracket", `[]]`, 10, []string{"trailing data after the array"}},
	{"trailing number", `[{"offset":0,"length":1,"exists":true}] 1`, 10, []string{"trailing data after the array"}},
	{"two lines, second invalid", `[{"offset":0,"length":1,"exists":true}]` + "\n" + `[{"offset":-1}]`, 10, []string{"trailing data"}},
}

func TestParseInvalid(t *testing.T) {
	for _, tc := range parseBad {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(strings.NewReader(tc.in), tc.size)
			if err == nil {
				t.Fatalf("Parse accepted %q: %v", tc.in, got)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %q does not wrap ErrInvalid", err)
			}
			if got != nil {
				t.Errorf("Parse returned extents %v with an error", got)
			}
			for _, m := range tc.msg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not contain %q", err, m)
				}
			}
		})
	}
}

func TestParseNegativeSourceSize(t *testing.T) {
	if _, err := Parse(strings.NewReader(`[]`), -1); err == nil {
		t.Fatal("Parse accepted a negative source size")
	}
}

// TestParseWholeDocument checks that a pretty-printed document is read past
// its first line: backy2 only read the first line.
func TestParseWholeDocument(t *testing.T) {
	in := "[\n{\"offset\":0,\"length\":1,\"exists\":true},\n{\"offset\":-1,\"length\":1,\"exists\":true}\n]\n"
	if _, err := Parse(strings.NewReader(in), 10); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "hint 1: offset -1 is negative") {
		t.Fatalf("Parse = %v, want the error about hint 1 on line 3", err)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestParseReadError(t *testing.T) {
	boom := errors.New("boom")
	r := io.MultiReader(strings.NewReader(`[{"offset":0,`), errReader{boom})
	_, err := Parse(r, 10)
	if !errors.Is(err, boom) {
		t.Fatalf("Parse = %v, want an error wrapping the read error", err)
	}
	if errors.Is(err, ErrInvalid) {
		t.Errorf("read error %q wraps ErrInvalid", err)
	}
}

func TestParseTooLarge(t *testing.T) {
	doc := `[{"offset":0,"length":1,"exists":true}]`
	for _, tc := range []struct {
		name  string
		in    string
		limit int64
		ok    bool
	}{
		{"exactly at the limit", doc, int64(len(doc)), true},
		{"trailing whitespace up to the limit", doc + "   ", int64(len(doc)) + 3, true},
		{"one byte over with whitespace", doc + "    ", int64(len(doc)) + 3, false},
		{"cut inside the array", doc, int64(len(doc)) - 1, false},
		{"long whitespace", strings.Repeat(" ", 10000) + doc, 9000, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parse(strings.NewReader(tc.in), 10, tc.limit)
			if tc.ok {
				if err != nil {
					t.Fatalf("parse: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "larger than "+strconv.FormatInt(tc.limit, 10)+" bytes") {
				t.Fatalf("parse = %v, want a size error", err)
			}
		})
	}
}

// spaces is an endless reader of blanks.
type spaces struct{}

func (spaces) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = ' '
	}
	return len(p), nil
}

func TestParseLimitIsOneGiB(t *testing.T) {
	if maxInputSize != 1<<30 {
		t.Fatalf("maxInputSize = %d, want 1 GiB", maxInputSize)
	}
}

// TestParseOneGiB checks the real limit: Parse stops reading an endless
// input after 1 GiB. It takes several seconds, so it only runs with
// BACKY_SLOW_TESTS=1.
func TestParseOneGiB(t *testing.T) {
	if os.Getenv("BACKY_SLOW_TESTS") == "" {
		t.Skip("reads 1 GiB; set BACKY_SLOW_TESTS=1 to run")
	}
	_, err := Parse(io.MultiReader(strings.NewReader("["), spaces{}), 10)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "larger than 1073741824 bytes") {
		t.Fatalf("Parse = %v, want a size error", err)
	}
}

func TestParseTestdata(t *testing.T) {
	for _, tc := range []struct {
		file   string
		size   int64
		n      int
		hinted int64
	}{
		{"rbd-diff-pretty.json", 10 * gib, 10, 20*mib + 512*1024 + 8192},
		{"rbd-diff-oneline.json", 1 * gib, 5, 12 * mib},
	} {
		t.Run(tc.file, func(t *testing.T) {
			f, err := os.Open(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			ext, err := Parse(f, tc.size)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if len(ext) != tc.n {
				t.Fatalf("got %d extents, want %d", len(ext), tc.n)
			}
			m := NewMap(ext, 4*mib, tc.size)
			if got := m.HintedBytes(); got != tc.hinted {
				t.Errorf("HintedBytes = %d, want %d", got, tc.hinted)
			}
			// One byte less of source and the last hint no longer fits.
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				t.Fatal(err)
			}
			if _, err := Parse(f, tc.size-1); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "past the end of the source") {
				t.Errorf("Parse with a smaller source = %v, want a past-the-end error", err)
			}
		})
	}
}

func TestParsePrettyClasses(t *testing.T) {
	f, err := os.Open(filepath.Join("testdata", "rbd-diff-pretty.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ext, err := Parse(f, 10*gib)
	if err != nil {
		t.Fatal(err)
	}
	m := NewMap(ext, 4*mib, 10*gib)
	if m.NumBlocks() != 2560 {
		t.Fatalf("NumBlocks = %d", m.NumBlocks())
	}
	counts := map[Class]int{}
	for i := range m.NumBlocks() {
		counts[m.Class(i)]++
	}
	// Read: blocks 0, 1, 16, 17 (512 KiB), 512 (8 KiB), 1280, 2559.
	// Sparse: 256, 257 and 2048..2063.
	want := map[Class]int{Read: 7, Sparse: 18, Untouched: 2560 - 25}
	if !maps.Equal(counts, want) {
		t.Fatalf("class counts %v, want %v", counts, want)
	}
}
