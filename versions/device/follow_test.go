package device_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/blockread"
	"github.com/backy/backy/versions/device"
)

// moving is a block store on which each Get of block id, moves times,
// finds its object switched away first: as if a migrate-encryption
// committed a switch (new object, record switched, old object deleted)
// just before each read.
type moving struct {
	*blockstore.Store
	db    *metastore.DB
	mu    sync.Mutex
	id    block.ID
	moves int
}

func (m *moving) Get(ctx context.Context, rec block.Record, buf []byte) ([]byte, error) {
	m.mu.Lock()
	move := rec.ID == m.id && m.moves > 0
	if move {
		m.moves--
	}
	m.mu.Unlock()
	if !move {
		return m.Store.Get(ctx, rec, buf)
	}
	data, err := m.Store.Get(ctx, rec, nil)
	if err != nil {
		return nil, err
	}
	nrec, err := m.Store.Put(ctx, rec.ID, data)
	if err != nil {
		return nil, err
	}
	if err := m.Store.Flush(ctx); err != nil {
		return nil, err
	}
	r, err := m.db.ReplaceObjects([]metastore.Replacement{{Old: rec.Name, New: nrec}})
	if err != nil || len(r.Replaced) != 1 {
		return nil, fmt.Errorf("switch: %v %+v", err, r)
	}
	if err := m.Store.Delete(ctx, rec.Name); err != nil {
		return nil, err
	}
	if err := m.db.ForgetTrash(r.Replaced); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("%w: block %s (object %s): moved away", blockstore.ErrMissing, rec.ID.Short(), rec.Name)
}

// TestReadFollowsMoves: a read of the device follows a block's record as
// often as the verified reader does (blockread.MaxFollows), whatever the
// engine (it followed once before), and a record that keeps moving is an
// I/O error, not damage: nothing is marked invalid.
func TestReadFollowsMoves(t *testing.T) {
	for _, moves := range []int{1, 2, blockread.MaxFollows, blockread.MaxFollows + 1} {
		t.Run(fmt.Sprint("moves=", moves), func(t *testing.T) {
			e := newEnv(t)
			img := image(7, 6)
			v := e.backup(img, backup.Options{})
			pages, err := e.db.PageList(v.UID)
			if err != nil {
				t.Fatal(err)
			}
			ids, err := e.db.Page(pages[0])
			if err != nil {
				t.Fatal(err)
			}
			st := &moving{Store: e.st, db: e.db, id: ids[3], moves: moves}
			d, err := device.Open(context.Background(), e.db, st, v.UID, device.Options{ReadOnly: true, ReadAhead: -1})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			buf := make([]byte, bs)
			err = d.ReadAt(context.Background(), buf, 3*bs)
			if moves <= blockread.MaxFollows {
				if err != nil || !bytes.Equal(buf, img[3*bs:4*bs]) {
					t.Fatalf("read of a block moved %d times: %v", moves, err)
				}
			} else if !errors.Is(err, blockread.ErrMoving) || blockread.IsDamage(err) {
				t.Fatalf("read of a block that keeps moving: %v, want ErrMoving", err)
			}
			if got, err := e.db.Version(v.UID); err != nil || got.Status != metastore.StatusValid || len(d.Bad()) != 0 {
				t.Errorf("after the read: %+v, %v, bad %v; want valid, nothing bad", got, err, d.Bad())
			}
			// The next read finds the block (cached, or by the new record,
			// which replaced the old one in the page cache).
			if err := d.ReadAt(context.Background(), buf, 3*bs); err != nil || !bytes.Equal(buf, img[3*bs:4*bs]) {
				t.Errorf("second read: %v", err)
			}
		})
	}
}
