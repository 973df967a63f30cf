package blockread

import (
	"context"
	"errors"
	"fmt"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/internal/block"
)

// MaxFollows is how many times a read follows a block's record to another
// object before it gives up with ErrMoving (see the package documentation
// for why 3).
const MaxFollows = 3

// Errors, tested with errors.Is.
var (
	// ErrRemoved: the block that failed has no record any more. The error
	// also wraps the store's ErrMissing or ErrCorrupt (IsDamage holds).
	ErrRemoved = errors.New("the block has no record in the metastore any more")
	// ErrMoving: the block's record named another object each time it was
	// looked up again, MaxFollows times. Not damage.
	ErrMoving = errors.New("the block's record kept moving to other objects while it was read")
)

// Store is what the reader needs of the keyed block store
// (blockstore.Store): a read that verifies header, AEAD and BLAKE3.
type Store interface {
	Get(ctx context.Context, rec block.Record, buf []byte) ([]byte, error)
}

// Checker is what Check needs of the block store: whether the object
// exists with its stored size.
type Checker interface {
	Check(ctx context.Context, rec block.Record) error
}

// Index is what the reader needs of the metastore: a block's current
// record.
type Index interface {
	LookupBlock(id block.ID) (block.Record, bool, error)
}

// IsDamage reports whether err says that a stored block is missing or
// corrupt (blockstore.ErrMissing, blockstore.ErrCorrupt).
func IsDamage(err error) bool {
	return errors.Is(err, blockstore.ErrMissing) || errors.Is(err, blockstore.ErrCorrupt)
}

// Get reads and verifies block rec.ID from st into buf (see
// blockstore.Store.Get), following its record in ix if the object failed
// and the record names another one now. It returns the data and the
// record it was read from, or an error that IsDamage, ErrMoving or any
// other error (see the package documentation).
func Get(ctx context.Context, st Store, ix Index, rec block.Record, buf []byte) ([]byte, block.Record, error) {
	for follows := 0; ; follows++ {
		data, err := st.Get(ctx, rec, buf)
		if err == nil || !IsDamage(err) {
			return data, rec, err
		}
		next, err := follow(ix, rec, follows, err)
		if err != nil {
			return nil, rec, err
		}
		rec = next
	}
}

// Check checks that block rec.ID's object exists in st with its stored
// size, following its record in ix as Get does. It returns the record it
// checked, and an error as Get's.
func Check(ctx context.Context, st Checker, ix Index, rec block.Record) (block.Record, error) {
	for follows := 0; ; follows++ {
		err := st.Check(ctx, rec)
		if err == nil || !IsDamage(err) {
			return rec, err
		}
		next, err := follow(ix, rec, follows, err)
		if err != nil {
			return rec, err
		}
		rec = next
	}
}

// follow looks up the record of block rec.ID again after damage (err) was
// found at rec's object, with follows done so far. It returns the record
// to read next, or the error to return: the damage (wrapping ErrRemoved
// too if the record is gone), ErrMoving, or the lookup's error.
func follow(ix Index, rec block.Record, follows int, damage error) (block.Record, error) {
	cur, found, err := ix.LookupBlock(rec.ID)
	switch {
	case err != nil:
		return rec, fmt.Errorf("looking up block %s again after a failed read: %w", rec.ID.Short(), err)
	case !found:
		return rec, fmt.Errorf("%w (%w)", damage, ErrRemoved)
	case cur.Name == rec.Name:
		return rec, damage
	case follows >= MaxFollows:
		return rec, fmt.Errorf("%w: block %s, followed %d times (last: %v)", ErrMoving, rec.ID.Short(), follows, damage)
	}
	return cur, nil
}
