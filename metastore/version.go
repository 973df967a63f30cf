package metastore

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Status is a version's state.
type Status string

const (
	// StatusIncomplete: the backup has not finished (running, or killed).
	StatusIncomplete Status = "incomplete"
	// StatusValid: every block was stored and, as far as backy knows, is intact.
	StatusValid Status = "valid"
	// StatusInvalid: at least one block is known damaged or missing.
	StatusInvalid Status = "invalid"
)

// Version is one backup of a volume. Its JSON form is backy's version
// object (README "The version object"); it is also how versions are stored.
type Version struct {
	UID               string            `json:"uid"`
	Volume            string            `json:"volume"`
	Snapshot          string            `json:"snapshot"`
	Date              time.Time         `json:"date"`
	Size              int64             `json:"size"`
	BlockSize         int64             `json:"block_size"`
	Status            Status            `json:"status"`
	Protected         bool              `json:"protected"`
	Labels            map[string]string `json:"labels"`
	Expire            *time.Time        `json:"expire,omitempty"`
	Base              string            `json:"base,omitempty"`
	BlocksDone        int64             `json:"blocks_done"`
	BytesRead         int64             `json:"bytes_read"`
	BytesWritten      int64             `json:"bytes_written"`
	BytesDeduplicated int64             `json:"bytes_deduplicated"`
	BytesSparse       int64             `json:"bytes_sparse"`
	DurationSeconds   float64           `json:"duration_seconds"`
	Removing          bool              `json:"removing,omitempty"`
	// LastScrub is the outcome of the last scrub or deep-scrub that
	// covered the version; LastDeepScrub that of the last deep-scrub (a
	// plain scrub does not replace it).
	LastScrub     *ScrubRecord `json:"last_scrub,omitempty"`
	LastDeepScrub *ScrubRecord `json:"last_deep_scrub,omitempty"`
}

// ScrubRecord is the outcome of one scrub of a version.
type ScrubRecord struct {
	At time.Time `json:"at"`
	// Kind is "scrub" (metadata and object existence) or "deep-scrub"
	// (every sampled block read and verified).
	Kind string `json:"kind"`
	// Percent is the share of the version's blocks sampled (100 = all).
	Percent float64 `json:"percent"`
	// OK reports that no checked block of the version was bad.
	OK            bool  `json:"ok"`
	BlocksChecked int64 `json:"blocks_checked"`
	BlocksBad     int64 `json:"blocks_bad"`
	// BlocksDiffering counts the positions that differ from the source
	// a deep-scrub compared the version with (not damage: OK may be true).
	BlocksDiffering int64 `json:"blocks_differing,omitempty"`
}

// MarshalJSON writes the record with At in whole seconds (RFC 3339, UTC),
// as every date of the version object is written.
func (r ScrubRecord) MarshalJSON() ([]byte, error) {
	type plain ScrubRecord
	p := plain(r)
	p.At = p.At.UTC().Truncate(time.Second)
	return json.Marshal(p)
}

// Blocks returns the number of blocks of the version.
func (v *Version) Blocks() int64 {
	if v.BlockSize <= 0 {
		return 0
	}
	return (v.Size + v.BlockSize - 1) / v.BlockSize
}

// NewUID returns a fresh version uid: "V", 12 hex digits of the creation
// time in milliseconds (so uids sort by age), and 8 random hex digits.
func NewUID(now time.Time) (string, error) {
	var b [10]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16)
	if _, err := rand.Read(b[6:]); err != nil {
		return "", err
	}
	return "V" + hex.EncodeToString(b[:]), nil
}

func decodeVersion(k, v []byte) (*Version, error) {
	var ver Version
	if err := json.Unmarshal(v, &ver); err != nil || ver.UID != string(k) {
		return nil, fmt.Errorf("%w: version %q: undecodable record", ErrCorrupt, k)
	}
	if ver.Labels == nil {
		ver.Labels = map[string]string{}
	}
	return &ver, nil
}

// putVersion stores v and records that it changed (its snapshot in the
// backend is stale from now on).
func putVersion(tx *bolt.Tx, v *Version) error {
	if err := putVersionQuiet(tx, v); err != nil {
		return err
	}
	return markChanged(tx, v.UID)
}

// putVersionQuiet stores v without marking its snapshot stale: for changes
// the snapshot need not carry (the outcome of the last scrub).
func putVersionQuiet(tx *bolt.Tx, v *Version) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Bucket(bktVersions).Put([]byte(v.UID), b)
}

// CreateVersion records a new version (normally StatusIncomplete) with an
// empty block map.
func (db *DB) CreateVersion(v *Version) error {
	if !validUID(v.UID) {
		return fmt.Errorf("invalid version uid %q", v.UID)
	}
	return db.update(func(tx *bolt.Tx) error {
		if tx.Bucket(bktVersions).Get([]byte(v.UID)) != nil {
			return fmt.Errorf("version %s already exists", v.UID)
		}
		if err := tx.Bucket(bktMaps).Put([]byte(v.UID), []byte{}); err != nil {
			return err
		}
		return putVersion(tx, v)
	})
}

// Version returns the version with the given uid, or ErrVersionNotFound.
func (db *DB) Version(uid string) (*Version, error) {
	var v *Version
	err := db.view(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bktVersions).Get([]byte(uid))
		if raw == nil {
			return fmt.Errorf("%w: %s", ErrVersionNotFound, uid)
		}
		var err error
		v, err = decodeVersion([]byte(uid), raw)
		return err
	})
	return v, err
}

// Versions returns every version that keep accepts (all when keep is nil),
// oldest first.
func (db *DB) Versions(keep func(*Version) bool) ([]*Version, error) {
	var out []*Version
	err := db.view(func(tx *bolt.Tx) error {
		return tx.Bucket(bktVersions).ForEach(func(k, raw []byte) error {
			v, err := decodeVersion(k, raw)
			if err != nil {
				return err
			}
			if keep == nil || keep(v) {
				out = append(out, v)
			}
			return nil
		})
	})
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].Date.Equal(out[j].Date) {
			return out[i].Date.Before(out[j].Date)
		}
		return out[i].UID < out[j].UID
	})
	return out, err
}

// UpdateVersion applies fn to the stored version in one transaction. If fn
// returns an error nothing changes.
func (db *DB) UpdateVersion(uid string, fn func(*Version) error) (*Version, error) {
	var v *Version
	err := db.update(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bktVersions).Get([]byte(uid))
		if raw == nil {
			return fmt.Errorf("%w: %s", ErrVersionNotFound, uid)
		}
		var err error
		if v, err = decodeVersion([]byte(uid), raw); err != nil {
			return err
		}
		if err := fn(v); err != nil {
			return err
		}
		v.UID = uid
		return putVersion(tx, v)
	})
	return v, err
}
