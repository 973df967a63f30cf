// Package transfer moves version metadata between a metastore and the
// outside: export to a stream, import from one, rebuild a whole metastore
// from the snapshots in the data backend (package catalog), and build a
// throwaway metastore of one version for a restore without any.
//
// Imports never queue an object for deletion: everything is validated
// first (the stream's structure and checksum, the store, the key
// registrations, the uids, and, unless told not to, that every object the
// stream names exists in the backend with its recorded size), then applied
// in one metastore transaction. A failure at any point leaves the
// metastore as it was.
package transfer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/catalog"
	"github.com/backy/backy/versions/manifest"
)

// Errors, tested with errors.Is.
var (
	// ErrOtherStore: the stream belongs to another store (store id or
	// block size).
	ErrOtherStore = errors.New("the metadata belongs to another store")
	// ErrExists: a version of the stream exists in the metastore.
	ErrExists = errors.New("version exists already")
	// ErrMissingObjects: objects the stream names are not in the backend.
	ErrMissingObjects = errors.New("objects the metadata names are missing from the backend")
	// ErrKeyMismatch: the stream registers an encryption version with
	// another key than the store's.
	ErrKeyMismatch = errors.New("encryption version registered with another key")
	// ErrNotExportable: the version is incomplete or being removed.
	ErrNotExportable = errors.New("version cannot be exported")
)

// ExportResult describes an export.
type ExportResult struct {
	Versions []string `json:"versions"`
	Bytes    int64    `json:"bytes"`
}

// Export writes the versions uids, in that order, to w as one manifest
// stream. Each version is share-locked for the whole export, so none is
// removed meanwhile. Memory does not depend on the versions' sizes.
func Export(ctx context.Context, db *metastore.DB, uids []string, w io.Writer, writtenBy string) (*ExportResult, error) {
	var vs []*metastore.Version
	for _, uid := range uids {
		lk, err := db.LockVersion(uid, metastore.Shared)
		if err != nil {
			return nil, err
		}
		defer lk.Unlock()
		v, err := db.Version(uid)
		if err != nil {
			return nil, err
		}
		if v.Status == metastore.StatusIncomplete || v.Removing {
			return nil, fmt.Errorf("%w: %s is %s (finish it with 'backy backup --resume' or remove it)", ErrNotExportable, uid, describe(v))
		}
		vs = append(vs, v)
	}
	info, keys, err := catalog.StoreInfo(db, writtenBy)
	if err != nil {
		return nil, err
	}
	mw, err := manifest.NewWriter(w, info, keys)
	if err != nil {
		return nil, err
	}
	res := &ExportResult{}
	for _, v := range vs {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := catalog.WriteVersion(mw, db, v); err != nil {
			return nil, fmt.Errorf("exporting %s: %w", v.UID, err)
		}
		res.Versions = append(res.Versions, v.UID)
	}
	if err := mw.Close(); err != nil {
		return nil, err
	}
	res.Bytes = mw.Written()
	return res, nil
}

func describe(v *metastore.Version) string {
	if v.Removing {
		return "being removed"
	}
	return string(v.Status)
}

// Statter checks that an object exists with its recorded size
// (blockstore.Store.Check).
type Statter interface {
	Check(ctx context.Context, rec block.Record) error
}

// ImportOptions configures an import.
type ImportOptions struct {
	// Objects, when set, is asked for every record the stream holds: the
	// import is refused if any object is missing or of another size.
	// nil skips the check (--no-verify).
	Objects Statter
	// Workers bounds the object checks in flight; 0 = 16.
	Workers int
	Logger  *slog.Logger
}

// ImportResult describes an import.
type ImportResult struct {
	Versions []string `json:"versions"`
	// Blocks counts block references imported, Records the block
	// records the stream holds and ObjectsChecked those checked in the
	// backend.
	Blocks         int64 `json:"blocks"`
	Records        int64 `json:"records"`
	ObjectsChecked int64 `json:"objects_checked"`
	// RecordsResolved counts records of the stream that name another
	// object than the metastore's record of their block (an export made
	// before migrate-encryption): the metastore's record is used.
	RecordsResolved int64 `json:"records_resolved"`
}

// MissingError lists objects an import found missing or damaged that
// the metastore has no record of their blocks to use instead.
type MissingError struct {
	Count   int64
	Samples []string
}

func (e *MissingError) Error() string {
	return fmt.Sprintf("%d object(s) the metadata names are missing from the data backend or of the wrong size (first: %v), "+
		"and this metastore has no record of their blocks to use instead: they were deleted or rewritten after the export was made "+
		"(cleanup after rm, migrate-encryption), so these versions cannot be imported from this export; import a newer export of them, "+
		"or, if the data backend still holds their metadata ('backy ls --from-backend'), get them back with 'backy rebuild-metastore'",
		e.Count, e.Samples)
}

func (e *MissingError) Unwrap() error { return ErrMissingObjects }

// Import reads the stream open returns twice: first to validate it
// completely, then to apply it in one metastore transaction. open must
// return the same bytes each time (a file; spool standard input first).
// The caller holds the store's writers lock shared, so that no orphan
// sweep deletes objects between the check and the commit.
func Import(ctx context.Context, db *metastore.DB, open func() (io.ReadCloser, error), o ImportOptions) (*ImportResult, error) {
	if o.Workers <= 0 {
		o.Workers = 16
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	res, err := validate(ctx, db, open, o)
	if err != nil {
		return nil, err
	}
	rc, err := open()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	mr, err := manifest.NewReader(rc)
	if err != nil {
		return nil, err
	}
	err = db.Import(func(im *metastore.Importer) error {
		if err := registerKeys(im, mr.Keys()); err != nil {
			return err
		}
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			v, err := mr.NextVersion()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if err := importVersion(im, mr, v); err != nil {
				return err
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("importing (nothing was changed): %w", err)
	}
	return res, nil
}

// importVersion adds v and its pages through im.
func importVersion(im *metastore.Importer, mr *manifest.Reader, v *metastore.Version) error {
	if im.HasVersion(v.UID) {
		return fmt.Errorf("%w: %s", ErrExists, v.UID)
	}
	if err := im.CreateVersion(v); err != nil {
		return err
	}
	for {
		p, err := mr.NextPage()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := im.AppendPage(v.UID, p.IDs, p.Records); err != nil {
			return fmt.Errorf("version %s, block %d: %w", v.UID, p.First, err)
		}
	}
}

// registrationKey is what must agree between two registrations of one
// encryption version.
type registrationKey struct {
	Cipher string `json:"cipher"`
	KeyID  string `json:"key_id"`
}

func sameKey(a, b []byte) bool {
	var ka, kb registrationKey
	if json.Unmarshal(a, &ka) != nil || json.Unmarshal(b, &kb) != nil {
		return false
	}
	return ka == kb && ka.KeyID != ""
}

// checkKeys compares the stream's key registrations with the store's.
func checkKeys(db *metastore.DB, keys []manifest.KeyReg) error {
	have, err := db.EncVersions()
	if err != nil {
		return err
	}
	for _, k := range keys {
		if cur, ok := have[k.EncVersion]; ok && !sameKey(cur, k.Registration) {
			return fmt.Errorf("%w: encryption version %d of the metadata has another cipher or key id than this store's", ErrKeyMismatch, k.EncVersion)
		}
	}
	return nil
}

func registerKeys(im *metastore.Importer, keys []manifest.KeyReg) error {
	for _, k := range keys {
		if cur, ok := im.EncVersion(k.EncVersion); ok {
			if !sameKey(cur, k.Registration) {
				return fmt.Errorf("%w: encryption version %d", ErrKeyMismatch, k.EncVersion)
			}
			continue
		}
		if err := im.RegisterEncVersion(k.EncVersion, k.Registration); err != nil {
			return err
		}
	}
	return nil
}

// checkStore compares the stream's store with db's.
func checkStore(db *metastore.DB, s manifest.StoreInfo) error {
	if s.StoreID != db.StoreID() {
		sid := db.StoreID()
		return fmt.Errorf("%w: it is of store %x, this one is %x (import works over the same data backend only; use 'backy copy' between stores)", ErrOtherStore, s.StoreID, sid)
	}
	if s.BlockSize != db.BlockSize() {
		return fmt.Errorf("%w: block size %d, this store's is %d", ErrOtherStore, s.BlockSize, db.BlockSize())
	}
	return nil
}

// validate reads the whole stream once, checking everything the import
// relies on before anything is written. A damaged stream is reported
// before versions that exist already (the file is the bigger problem),
// and those before missing objects.
func validate(ctx context.Context, db *metastore.DB, open func() (io.ReadCloser, error), o ImportOptions) (*ImportResult, error) {
	rc, err := open()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	mr, err := manifest.NewReader(rc)
	if err != nil {
		return nil, err
	}
	if err := checkStore(db, mr.Store()); err != nil {
		return nil, err
	}
	if err := checkKeys(db, mr.Keys()); err != nil {
		return nil, err
	}
	res := &ImportResult{}
	missing := &MissingError{}
	var exists []string
	// A block several pages or versions name is checked each time; it
	// counts as one missing object.
	seen := map[block.Name]bool{}
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.Workers)
	check := func(recs []block.Record) {
		for _, r := range recs {
			g.Go(func() error {
				err := o.Objects.Check(gctx, r)
				mu.Lock()
				defer mu.Unlock()
				res.ObjectsChecked++
				switch {
				case err == nil:
				case errors.Is(err, blockstore.ErrMissing) || errors.Is(err, blockstore.ErrCorrupt):
					if seen[r.Name] {
						return nil
					}
					seen[r.Name] = true
					missing.Count++
					if len(missing.Samples) < 5 {
						missing.Samples = append(missing.Samples, r.Name.String())
					}
				default:
					return err
				}
				return nil
			})
		}
	}
	var lookups []metastore.Lookup
	var ids []block.ID
	readErr := func() error {
		for {
			if err := gctx.Err(); err != nil {
				return err
			}
			v, err := mr.NextVersion()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			present := false
			if _, err := db.Version(v.UID); err == nil {
				// Refused, but only once the whole stream verified.
				present = true
				exists = append(exists, v.UID)
			} else if !errors.Is(err, metastore.ErrVersionNotFound) {
				return err
			}
			res.Versions = append(res.Versions, v.UID)
			for {
				p, err := mr.NextPage()
				if err == io.EOF {
					break
				}
				if err != nil {
					return err
				}
				res.Blocks += int64(len(p.IDs))
				res.Records += int64(len(p.Records))
				if present || len(p.Records) == 0 {
					continue
				}
				// The import keeps the record the metastore has of a
				// block (Importer.AppendPage): an export made before
				// migrate-encryption names objects since replaced, and
				// the store's record names the current one. So check
				// the object the version will use.
				ids = ids[:0]
				for _, r := range p.Records {
					ids = append(ids, r.ID)
				}
				lookups = slices.Grow(lookups[:0], len(ids))[:len(ids)]
				if err := db.LookupBlocks(ids, lookups); err != nil {
					return err
				}
				// Records are reused by the reader: check copies.
				recs := make([]block.Record, 0, len(p.Records))
				for i, r := range p.Records {
					if l := lookups[i]; l.Found {
						if l.Record.Name != r.Name {
							res.RecordsResolved++
						}
						if l.Record.Invalid {
							// Known damaged: the imported version
							// will be invalid; nothing to check.
							continue
						}
						r = l.Record
					}
					recs = append(recs, r)
				}
				if o.Objects != nil {
					check(recs)
				}
			}
		}
	}()
	werr := g.Wait()
	if readErr != nil {
		if len(exists) > 0 {
			return nil, fmt.Errorf("%w (besides, this metastore has %s already)", readErr, strings.Join(exists, " "))
		}
		return nil, readErr
	}
	if len(exists) > 0 {
		return nil, fmt.Errorf("%w: %s (remove it first, or import the others)", ErrExists, strings.Join(exists, " "))
	}
	if werr != nil {
		return nil, fmt.Errorf("checking the objects in the backend: %w", werr)
	}
	if missing.Count > 0 {
		return nil, missing
	}
	return res, nil
}
