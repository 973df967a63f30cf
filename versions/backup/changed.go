package backup

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/source"
)

// changeSample is how many of the first blocks a backup reads it reads
// again at its end, to compare them with what it stored.
const changeSample = 4

// watched wraps the source of a backup to tell, at its end, whether the
// source changed while it was read: its State (size; modification and
// status change times of a regular file) from before the first read, and
// the hashes of the first blocks read, read again. This catches what is
// cheap to catch (a file written or resized, a device whose first blocks
// moved, as a file system's superblock and group descriptors do on every
// write), not every change: only a snapshot makes a live source
// consistent.
type watched struct {
	source.Source
	holes  source.HoleFinder
	pf     source.Prefetcher
	stater source.Stater
	before source.State

	mu      sync.Mutex
	samples []readSample
}

type readSample struct {
	off int64
	n   int
	id  block.ID
}

func watch(src source.Source) (*watched, error) {
	w := &watched{Source: src}
	w.holes, _ = src.(source.HoleFinder)
	w.pf, _ = src.(source.Prefetcher)
	if st, ok := src.(source.Stater); ok {
		before, err := st.State()
		if err != nil {
			return nil, err
		}
		w.stater, w.before = st, before
	}
	return w, nil
}

// ReadAt reads from the source and remembers what the first blocks read
// hashed to.
func (w *watched) ReadAt(p []byte, off int64) (int, error) {
	n, err := w.Source.ReadAt(p, off)
	if n == len(p) && n > 0 {
		w.mu.Lock()
		if len(w.samples) < changeSample && !slices.ContainsFunc(w.samples, func(s readSample) bool { return s.off == off }) {
			w.samples = append(w.samples, readSample{off: off, n: n, id: block.Sum(p)})
		}
		w.mu.Unlock()
	}
	return n, err
}

// IsHole answers for sources that can tell holes (false is always safe).
func (w *watched) IsHole(off, n int64) bool { return w.holes != nil && w.holes.IsHole(off, n) }

// Prefetch passes the request on to sources that can read ahead.
func (w *watched) Prefetch(off, n int64) {
	if w.pf != nil {
		w.pf.Prefetch(off, n)
	}
}

// check fails with ErrSourceChanged when the source visibly changed since
// watch: its State differs, or a sampled block reads differently now.
func (w *watched) check(ctx context.Context) error {
	var what []string
	if w.stater != nil {
		now, err := w.stater.State()
		if err != nil {
			return err
		}
		if d := w.before.Changes(now); d != "" {
			what = append(what, d)
		}
	}
	w.mu.Lock()
	samples := slices.Clone(w.samples)
	w.mu.Unlock()
	var buf []byte
	differ, first := 0, int64(-1)
	for _, s := range samples {
		if err := ctx.Err(); err != nil {
			return err
		}
		if len(buf) < s.n {
			buf = make([]byte, s.n)
		}
		n, err := w.Source.ReadAt(buf[:s.n], s.off)
		if n < s.n && err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if n < s.n || block.Sum(buf[:s.n]) != s.id {
			differ++
			if first < 0 {
				first = s.off
			}
		}
	}
	if differ > 0 {
		what = append(what, fmt.Sprintf("%d of the first %d blocks read, read again at the end, differ from what was stored (the first at byte %d)", differ, len(samples), first))
	}
	if len(what) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %s: %s; what was stored is not a consistent image of any moment (back up a snapshot of a source in use)",
		ErrSourceChanged, w.Name(), strings.Join(what, "; "))
}

// LabelSourceChanged is the label a backup sets on its version, left
// incomplete, when the source changed while it was read (the value is
// when that was found, RFC 3339 UTC). Such a version cannot be resumed:
// what it holds is no consistent image, and finishing it would make it
// valid.
const LabelSourceChanged = "source-changed"

// sourceChanged marks the version when err says the source changed, and
// returns err.
func (e *engine) sourceChanged(err error) error {
	if !errors.Is(err, ErrSourceChanged) {
		return err
	}
	at := e.o.now().UTC().Format(time.RFC3339)
	v, uerr := e.db.UpdateVersion(e.v.UID, func(v *metastore.Version) error {
		if v.Labels == nil {
			v.Labels = map[string]string{}
		}
		v.Labels[LabelSourceChanged] = at
		return nil
	})
	if uerr != nil {
		e.log.Warn("could not label the version whose source changed", "version", e.v.UID, "err", uerr)
		return err
	}
	*e.v = *v
	e.log.Info("the source changed while it was read; the version is left incomplete", "version", v.UID)
	return err
}
