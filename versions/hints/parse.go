package hints

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
)

// Extent is one hint: the byte range [Offset, Offset+Length) of the source
// was written (Exists) or discarded/zeroed (!Exists) since the base snapshot.
type Extent struct {
	Offset int64
	Length int64
	Exists bool
}

// HasData reports whether extents name any data: an exists=true extent of
// at least one byte. Hints without data and without a base version
// describe an image that is all zeros, which is more often an empty or
// truncated hints file than the truth.
func HasData(extents []Extent) bool {
	for _, e := range extents {
		if e.Exists && e.Length > 0 {
			return true
		}
	}
	return false
}

// ErrInvalid is wrapped by every error about the content of a hints file.
var ErrInvalid = errors.New("invalid hints")

// maxInputSize is the largest hints document Parse accepts, in bytes.
const maxInputSize = 1 << 30

// Parse reads a whole hints document (a JSON array of
// {"offset":N,"length":N,"exists":B} objects, B being a bool or the string
// "true"/"false") and validates it against sourceSize, the size in bytes of
// the source being backed up.
//
// Every error about the content of the document wraps [ErrInvalid] and names
// the problem and the index (from 0) of the offending entry: input that is not
// a JSON array of objects, a missing or null field, an offset or length that
// is negative, not an integer or out of range, offset+length overflowing
// int64, an extent ending past sourceSize, exists that is neither a bool nor
// "true"/"false", trailing data after the array, or a document larger than
// 1 GiB. Errors from r itself are returned wrapped but do not wrap
// ErrInvalid.
//
// Unknown fields are ignored. Zero-length extents are validated like any
// other and then dropped from the result. The remaining extents are returned
// in document order; they may overlap.
func Parse(r io.Reader, sourceSize int64) ([]Extent, error) {
	return parse(r, sourceSize, maxInputSize)
}

// countingReader reads at most limit+1 bytes from r, counts them and keeps
// the first error from r that is not io.EOF.
type countingReader struct {
	r     io.Reader
	left  int64 // bytes still allowed, limit+1 at the start
	n     int64
	ioErr error
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	c.left -= int64(n)
	if err != nil && err != io.EOF && c.ioErr == nil {
		c.ioErr = err
	}
	return n, err
}

func parse(r io.Reader, sourceSize, limit int64) ([]Extent, error) {
	if sourceSize < 0 {
		return nil, fmt.Errorf("hints: negative source size %d", sourceSize)
	}
	cr := &countingReader{r: r, left: limit + 1}
	extents, err := decode(json.NewDecoder(cr), sourceSize)
	// The size and I/O checks come first: a document cut off at the limit or
	// by a read error also looks like bad JSON.
	if cr.n > limit {
		return nil, fmt.Errorf("%w: document larger than %d bytes", ErrInvalid, limit)
	}
	if cr.ioErr != nil {
		return nil, fmt.Errorf("reading hints: %w", cr.ioErr)
	}
	if err != nil {
		return nil, err
	}
	return extents, nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// jsonError describes an error of the JSON decoder, turning a bare io.EOF
// into "unexpected end of input".
func jsonError(err error) string {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return "unexpected end of input"
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("not valid JSON at byte %d: %v", se.Offset, err)
	}
	return "not valid JSON: " + err.Error()
}

func decode(dec *json.Decoder, sourceSize int64) ([]Extent, error) {
	tok, err := dec.Token()
	if err == io.EOF {
		return nil, invalid("empty document, expected a JSON array")
	}
	if err != nil {
		return nil, invalid("%s", jsonError(err))
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return nil, invalid("document is %s, expected a JSON array of objects", tokenKind(tok))
	}
	var extents []Extent
	for i := 0; dec.More(); i++ {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, invalid("hint %d: %s", i, jsonError(err))
		}
		e, err := parseEntry(i, raw, sourceSize)
		if err != nil {
			return nil, err
		}
		if e.Length > 0 {
			extents = append(extents, e)
		}
	}
	tok, err = dec.Token()
	if err != nil {
		return nil, invalid("%s", jsonError(err))
	}
	if d, ok := tok.(json.Delim); !ok || d != ']' {
		// Not reachable with encoding/json today (More stops only at ']' or
		// an error), kept as a guard.
		return nil, invalid("unexpected %s in the array", tokenKind(tok))
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, invalid("trailing data after the array")
	}
	return extents, nil
}

// tokenKind names the kind of a JSON token for error messages.
func tokenKind(tok json.Token) string {
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			return "an object"
		case '[':
			return "an array"
		}
		return fmt.Sprintf("%q", string(t))
	case bool:
		return "a bool"
	case float64, json.Number:
		return "a number"
	case string:
		return "a string"
	case nil:
		return "null"
	}
	return fmt.Sprintf("%T", tok)
}

// rawKind names the kind of a raw JSON value for error messages.
func rawKind(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return "empty"
	}
	switch c := raw[0]; {
	case c == '{':
		return "an object"
	case c == '[':
		return "an array"
	case c == '"':
		return "a string"
	case c == 't' || c == 'f':
		return "a bool"
	case c == 'n':
		return "null"
	default:
		return "a number"
	}
}

func parseEntry(i int, raw json.RawMessage, sourceSize int64) (Extent, error) {
	if k := rawKind(raw); k != "an object" {
		return Extent{}, invalid("hint %d is %s, expected an object", i, k)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return Extent{}, invalid("hint %d: %s", i, jsonError(err))
	}
	var e Extent
	var err error
	if e.Offset, err = intField(i, fields, "offset"); err != nil {
		return Extent{}, err
	}
	if e.Length, err = intField(i, fields, "length"); err != nil {
		return Extent{}, err
	}
	if e.Exists, err = existsField(i, fields); err != nil {
		return Extent{}, err
	}
	if e.Length > math.MaxInt64-e.Offset {
		return Extent{}, invalid("hint %d: offset %d + length %d overflows int64", i, e.Offset, e.Length)
	}
	if end := e.Offset + e.Length; end > sourceSize {
		return Extent{}, invalid("hint %d ends at byte %d, past the end of the source (%d bytes)", i, end, sourceSize)
	}
	return e, nil
}

// intField returns the non-negative integer in fields[name].
func intField(i int, fields map[string]json.RawMessage, name string) (int64, error) {
	raw, ok := fields[name]
	if !ok {
		return 0, invalid("hint %d: missing %q", i, name)
	}
	if k := rawKind(raw); k != "a number" {
		return 0, invalid("hint %d: %s is %s, expected an integer", i, name, k)
	}
	s := string(bytes.TrimSpace(raw))
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		if errors.Is(err, strconv.ErrRange) {
			if s[0] == '-' {
				return 0, invalid("hint %d: %s %s is negative", i, name, s)
			}
			return 0, invalid("hint %d: %s %s is too large (more than %d)", i, name, s, int64(math.MaxInt64))
		}
		return 0, invalid("hint %d: %s %s is not an integer", i, name, s)
	}
	if n < 0 {
		return 0, invalid("hint %d: %s %d is negative", i, name, n)
	}
	return n, nil
}

// existsField returns fields["exists"], a JSON bool or the string "true" or
// "false".
func existsField(i int, fields map[string]json.RawMessage) (bool, error) {
	raw, ok := fields["exists"]
	if !ok {
		return false, invalid("hint %d: missing %q", i, "exists")
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return false, invalid("hint %d: %s", i, jsonError(err))
	}
	switch v := v.(type) {
	case bool:
		return v, nil
	case string:
		switch v {
		case "true":
			return true, nil
		case "false":
			return false, nil
		}
		return false, invalid("hint %d: exists %q is neither \"true\" nor \"false\"", i, v)
	}
	return false, invalid("hint %d: exists is %s, expected a bool or the string \"true\"/\"false\"", i, rawKind(raw))
}
