package versions

import (
	"fmt"
	"slices"

	"github.com/backy/backy/metastore"
)

// CheckKeys returns the error of canOpen (which wraps object.ErrNoKey) for
// the lowest encryption version that some block of version uid is stored
// at and canOpen refuses, or nil. It reads the version's map only when the
// store holds blocks of such a version at all, so with every key
// configured it costs one read transaction. Restore and deep-scrub call it
// before they read or write anything.
func CheckKeys(db *metastore.DB, uid string, canOpen func(encVersion uint16) error) error {
	stats, err := db.EncStats()
	if err != nil {
		return err
	}
	var lacking []uint16
	for ev := range stats {
		if canOpen(ev) != nil {
			lacking = append(lacking, ev)
		}
	}
	if len(lacking) == 0 {
		return nil
	}
	used, err := db.EncVersionsOf(uid)
	if err != nil {
		return err
	}
	slices.Sort(lacking)
	for _, ev := range lacking {
		if used[ev] > 0 {
			return fmt.Errorf("version %s has %d block(s) at encryption version %d: %w", uid, used[ev], ev, canOpen(ev))
		}
	}
	return nil
}
