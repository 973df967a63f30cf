package transfer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"time"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/internal/atomicfile"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/catalog"
)

// Adopt creates the metastore at dbPath of the store the data backend
// holds, for an import into a store whose metastore is gone (the seed
// workflow of upgrades: export every version, move the metastore away,
// import the exports). It builds, beside dbPath, an empty metastore with
// the store identity from store.json, the key registrations of keys/ and
// the generation counter past every version snapshot in the backend (so
// that the snapshots written for imported versions are newer than what
// the backend holds of them), and calls fn with it. Only if fn succeeds is
// the metastore put in place; otherwise it is removed, so that a failed
// import leaves no metastore behind. It fails with metastore.ErrExists
// when a metastore is (or appears) at dbPath, and with
// blockstore.ErrNoIdentity when the backend holds no store. The caller
// holds metastore.LockCreate.
func Adopt(ctx context.Context, dbPath string, be backend.Backend, fn func(*metastore.DB) error) error {
	ident, sid, err := readIdentity(ctx, be)
	if err != nil {
		return err
	}
	if _, err := os.Stat(dbPath); err == nil {
		return fmt.Errorf("%w: %s", metastore.ErrExists, dbPath)
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	// Names only: listing needs no keys.
	st, err := blockstore.New(be, blockstore.Options{})
	if err != nil {
		return err
	}
	all, err := catalog.New(st, "", nil).List(ctx)
	st.Close()
	if err != nil {
		return err
	}
	var gen uint64
	for _, refs := range all {
		gen = max(gen, refs[0].Gen)
	}
	tmp := dbPath + ".adopting-" + strconv.FormatUint(rand.Uint64(), 36) // unique, not a time
	// The store's creation time is the identity's.
	db, err := metastore.Create(tmp, ident.BlockSize, sid, metastore.Options{Now: func() time.Time { return ident.Created }})
	if err != nil {
		return err
	}
	defer func() {
		_ = os.Remove(tmp)
		_ = os.RemoveAll(metastore.LockDir(tmp))
	}()
	err = importKeyObjects(ctx, db, be)
	if err == nil {
		err = db.Import(func(im *metastore.Importer) error { return im.AdvanceGen(gen) })
	}
	if err != nil {
		_ = db.Close()
		return fmt.Errorf("creating a metastore for the store in the data backend: %w", err)
	}
	err = fn(db)
	_ = db.Close()
	if err != nil {
		return err
	}
	// Never replacing: a metastore made meanwhile wins, and this one is
	// dropped.
	if err := atomicfile.Move(tmp, dbPath, atomicfile.Options{NoReplace: true}); err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%w: %s appeared meanwhile (nothing was imported; run the import again)", metastore.ErrExists, dbPath)
		}
		return fmt.Errorf("putting the new metastore in place: %w", err)
	}
	return nil
}
