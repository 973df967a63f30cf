package versions_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/backy/backy/versions"
	"github.com/backy/backy/versions/manifest"
)

func TestValidateNames(t *testing.T) {
	if versions.MaxVolumeLen != manifest.MaxVolume {
		t.Fatalf("MaxVolumeLen %d, the metadata stream holds %d", versions.MaxVolumeLen, manifest.MaxVolume)
	}
	many := map[string]string{}
	for i := range versions.MaxLabels + 1 {
		many[strings.Repeat("k", i+1)] = "v"
	}
	for _, tc := range []struct {
		name             string
		volume, snapshot string
		labels           map[string]string
		rule             string // "" = valid
	}{
		{"plain", "vm-101-disk-0", "nightly", map[string]string{"host": "pve1"}, ""},
		{"limits", strings.Repeat("ü", 127) + "x", strings.Repeat("s", 255), map[string]string{strings.Repeat("k", 128): strings.Repeat("v", 255)}, ""},
		{"unicode", "Datenträger ßeta 日本", "", nil, ""},
		{"empty volume", "", "", nil, "empty"},
		{"blank volume", "  ", "", nil, "empty"},
		{"long volume", strings.Repeat("v", 256), "", nil, "has 256 bytes, the limit is 255"},
		{"long volume in runes", strings.Repeat("ü", 128), "", nil, "has 256 bytes"},
		{"ESC", "a\x1bb", "", nil, "U+001B"},
		{"newline", "a\nb", "", nil, "U+000A"},
		{"tab", "a\tb", "", nil, "U+0009"},
		{"NUL", "a\x00b", "", nil, "U+0000"},
		{"DEL", "a\x7fb", "", nil, "U+007F"},
		{"C1", "a\u0085b", "", nil, "U+0085"},
		{"bad UTF-8", "a\xc3", "", nil, "not valid UTF-8"},
		{"snapshot long", "v", strings.Repeat("s", 256), nil, "snapshot name"},
		{"snapshot ESC", "v", "\x1b[2J", nil, "snapshot name"},
		{"label key space", "v", "", map[string]string{"a b": "c"}, "label key"},
		{"label key =", "v", "", map[string]string{"a=b": "c"}, "label key"},
		{"label key long", "v", "", map[string]string{strings.Repeat("k", 129): ""}, "label key"},
		{"label value newline", "v", "", map[string]string{"k": "a\nb"}, "value of label"},
		{"label value long", "v", "", map[string]string{"k": strings.Repeat("v", 256)}, "value of label"},
		{"too many labels", "v", "", many, "labels, at most 100"},
	} {
		err := versions.ValidateNames(tc.volume, tc.snapshot, tc.labels)
		switch {
		case tc.rule == "" && err != nil:
			t.Errorf("%s: %v, want valid", tc.name, err)
		case tc.rule != "" && (!errors.Is(err, versions.ErrBadName) || !strings.Contains(err.Error(), tc.rule)):
			t.Errorf("%s: %v, want ErrBadName saying %q", tc.name, err, tc.rule)
		case err != nil && strings.ContainsAny(err.Error(), "\x1b\n\t\x00\x7f"):
			t.Errorf("%s: the message carries a control character: %q", tc.name, err)
		}
	}
}
