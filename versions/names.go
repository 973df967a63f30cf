package versions

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ErrBadName: a volume name, snapshot name or label breaks a rule of
// ValidateNames.
var ErrBadName = errors.New("invalid name")

// Limits of the names a version carries. They go into the version's
// metadata in the data backend (versions/manifest: a volume name of 1 to
// 255 bytes, the version object at most 1 MiB of JSON), so a version that
// breaks them could be committed but never written there.
const (
	// MaxVolumeLen bounds a volume name in bytes (manifest.MaxVolume).
	MaxVolumeLen = 255
	// MaxSnapshotLen bounds a snapshot name in bytes.
	MaxSnapshotLen = 255
	// MaxLabelKeyLen and MaxLabelValueLen bound a label's key and value
	// in bytes; MaxLabels the labels of one version.
	MaxLabelKeyLen   = 128
	MaxLabelValueLen = 255
	MaxLabels        = 100
)

// ValidateNames checks what a new version is named by before anything is
// written: the volume name (1 to MaxVolumeLen bytes, not only spaces),
// the snapshot name (at most MaxSnapshotLen bytes, may be empty) and the
// labels (at most MaxLabels; keys 1 to MaxLabelKeyLen bytes without
// spaces or '=', values at most MaxLabelValueLen bytes). Every one must be
// valid UTF-8 without control characters (ESC, newline, tab, DEL, the C1
// range...), which would garble terminals and logs and which JSON would
// not keep as they are. The error wraps ErrBadName and says which rule.
func ValidateNames(volume, snapshot string, labels map[string]string) error {
	if err := ValidateVolume(volume); err != nil {
		return err
	}
	if err := checkText("snapshot name", snapshot, MaxSnapshotLen); err != nil {
		return err
	}
	return ValidateLabels(labels)
}

// ValidateVolume checks a volume name (see ValidateNames).
func ValidateVolume(volume string) error {
	if strings.TrimSpace(volume) == "" {
		return fmt.Errorf("%w: the volume name is empty: name the disk, e.g. vm-101-disk-0", ErrBadName)
	}
	return checkText("volume name", volume, MaxVolumeLen)
}

// ValidateLabels checks a version's labels (see ValidateNames).
func ValidateLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fmt.Errorf("%w: %d labels, at most %d are allowed", ErrBadName, len(labels), MaxLabels)
	}
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if k == "" || strings.ContainsAny(k, " =") {
			return fmt.Errorf("%w: label key %s: use a non-empty key without spaces or '='", ErrBadName, quoteName(k))
		}
		if err := checkText("label key", k, MaxLabelKeyLen); err != nil {
			return err
		}
		if err := checkText("value of label "+quoteName(k), labels[k], MaxLabelValueLen); err != nil {
			return err
		}
	}
	return nil
}

// checkText checks s against the length limit (in bytes) and the
// character rules.
func checkText(what, s string, limit int) error {
	if len(s) > limit {
		return fmt.Errorf("%w: %s %s has %d bytes, the limit is %d", ErrBadName, what, quoteName(s), len(s), limit)
	}
	for i, r := range s {
		if r == utf8.RuneError {
			if _, n := utf8.DecodeRuneInString(s[i:]); n <= 1 {
				return fmt.Errorf("%w: %s %s is not valid UTF-8 (byte %d)", ErrBadName, what, quoteName(s), i)
			}
		}
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: %s %s contains the control character %U at byte %d (control characters such as ESC, newline and tab are not allowed)", ErrBadName, what, quoteName(s), r, i)
		}
	}
	return nil
}

// quoteName quotes a name for a message: escaped (so a control character
// cannot reach the terminal) and clipped to 40 characters.
func quoteName(s string) string {
	if utf8.RuneCountInString(s) > 40 {
		r := []rune(s)
		return fmt.Sprintf("%+q...", string(r[:40]))
	}
	return fmt.Sprintf("%+q", s)
}
