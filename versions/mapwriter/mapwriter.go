package mapwriter

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/metastore/blockmap"
)

// Store is what the writer needs of the target's block store (a
// *blockstore.Store).
type Store interface {
	// Put seals a block and stores it under a new name.
	Put(ctx context.Context, id block.ID, plain []byte) (block.Record, error)
	// Delete removes an object; backend.ErrNotFound is fine.
	Delete(ctx context.Context, name block.Name) error
	// Flush makes every block stored so far durable.
	Flush(ctx context.Context) error
}

// Metastore is what the writer needs of the target's metastore (a
// *metastore.DB).
type Metastore interface {
	LookupBlock(id block.ID) (block.Record, bool, error)
	Commit(c metastore.Commit) (metastore.CommitResult, error)
	ForgetTrash(names []block.Name) error
}

// Kind says what a position of the map holds, and how it came to.
type Kind uint8

// Kinds of a Result.
const (
	// Sparse: the zero block, never stored (block.Sparse in the map).
	Sparse Kind = iota
	// Held: a block the engine vouches stays recorded until the commit
	// (an entry of a read-locked base version): referenced as it is and
	// never fetched again.
	Held
	// Found: Store found the block recorded, valid (deduplicated). If a
	// cleanup removes it before the commit, the writer fetches and stores
	// it again (a Refetched result).
	Found
	// Shared: another worker of this run stored the block (Rec); its
	// record is committed with the first position that names it.
	Shared
	// Stored: this position's worker stored the block (Rec).
	Stored
	// Page: a whole existing page (Page, with its Entries) reused as it
	// is; it fills len(Entries) positions and must start a page.
	Page
	// Refetched (only given to Config.Count): a Found block that a
	// cleanup removed before the commit was fetched and stored again
	// (Rec). Counted says whether Count was given its Found result.
	Refetched
)

// Result is what a position holds: what Work returns for a job.
type Result struct {
	Kind Kind
	// ID is the block (Held, Found, Shared, Stored, Refetched).
	ID block.ID
	// Rec is the record of the object stored (Shared, Stored, Refetched).
	Rec block.Record
	// Page and Entries are the page reused and its entries (Page).
	Page    blockmap.PageID
	Entries []block.ID
	// Counted (Refetched): the position is at or after Config.Counted, so
	// Count was given its Found result: move its count from deduplicated
	// to stored. Otherwise an earlier run counted it: count the store only.
	Counted bool
}

// Config describes the map of one version to write. J is the engine's
// job: what its reader emits for a position, handed back to Work, Fetch,
// Refetch and Count.
type Config[J any] struct {
	Store Store
	DB    Metastore
	// UID is the version whose map is written. It exists, incomplete, and
	// the caller holds its exclusive lock and the store's writers lock.
	UID string
	// FirstPage is the first page written: the pages before it are
	// committed and stay (a resumed run). The reader's first job is for
	// position FirstPage * blockmap.PageEntries.
	FirstPage int64
	// End is the number of positions of the map: the jobs cover exactly
	// [FirstPage * blockmap.PageEntries, End).
	End int64
	// Counted is the number of leading positions an earlier run counted
	// in the version's statistics (its blocks_done): Count is given only
	// the positions from Counted on.
	Counted int64
	// Workers run Work in parallel (at least 1).
	Workers int
	// CommitInterval is the longest time between commits while Run runs
	// (they also happen every 8 full pages).
	CommitInterval time.Duration
	// Start and PrevDuration make the version's duration: PrevDuration
	// (earlier runs) plus the time since Start.
	Start        time.Time
	PrevDuration float64
	// BufSize, when positive, gives each worker a buffer of that capacity
	// (length 0) to pass to Work, for Store to pass on to Fetch.
	BufSize int
	// Name names the target store in errors and log messages ("target
	// store"); "" for none.
	Name   string
	Logger *slog.Logger
	// Clock times the commit interval and the duration; nil =
	// clock.System.
	Clock clock.Clock

	// Read emits the jobs in map order; emit blocks while the window of
	// outstanding jobs is full and fails once the run is cancelled (the
	// job is then not taken: Read releases what it holds and returns).
	Read func(ctx context.Context, emit func(J) error) error
	// Work turns one job into its Result, calling Store for a block that
	// must be in the store. It runs in the workers.
	Work func(ctx context.Context, j J, buf []byte) (Result, error)
	// Fetch returns the plaintext of the block of job j, verified to be
	// the block Store was given; Store calls it, with its buf, when it was
	// given no data and the block must be stored. Needed only then.
	Fetch func(ctx context.Context, j J, buf []byte) ([]byte, error)
	// Refetch returns the plaintext of block id, which job j names, again,
	// verified to be that block (or an error: the source changed, the block is
	// damaged), after a cleanup removed it. The returned bytes may be
	// reused by the next call.
	Refetch func(ctx context.Context, id block.ID, j J) ([]byte, error)
	// Count, when set, folds a result into the engine's statistics, in
	// map order, from the committer; idx is the result's first position.
	// A Page result's Entries are then only those from Counted on.
	// Refetched results come from Commit.
	Count func(idx int64, j J, r Result)
	// Progress, when set, is called after each result from the committer
	// with the number of positions now covered (from position 0).
	Progress func(next int64)
	// Update, when set, sets the engine's fields of the version in each
	// commit's transaction (statistics; on the final commit its status),
	// after the writer set BlocksDone and DurationSeconds. v is the
	// version as committed if the transaction succeeds.
	Update func(v *metastore.Version, final bool)
}

// Writer writes one version's map; see the package doc.
type Writer[J any] struct {
	c   Config[J]
	log *slog.Logger
	// workerErr is the first error a worker failed with, recorded before
	// the worker counts as done: the committer, finding the results
	// closed early, reports it rather than a gap in the map (errgroup
	// records a goroutine's error only after it returns).
	workerErr atomic.Pointer[error]

	mu       sync.Mutex
	inflight map[block.ID]*upload

	// The committer's state: the committer goroutine's during Run, the
	// caller's in Commit.
	next           int64                 // positions added
	committedPages int                   // full pages committed
	committedPos   int64                 // their positions: [0, committedPos)
	full           []metastore.PageWrite // complete pages since the last commit
	fullPos        int64                 // positions in full
	tail           []block.ID            // entries of the page being filled
	newRecs        []block.Record        // objects stored since the last commit
	seen           map[block.ID]bool     // ids in newRecs
	dedup          map[block.ID]found[J] // Found blocks since the last commit -> a position naming it
	lastCommit     time.Time
}

// upload is a block being stored by one worker, which others meeting the
// same block wait for.
type upload struct {
	done  chan struct{}
	rec   block.Record
	err   error
	found bool // the block was found recorded: nothing to share
}

type found[J any] struct {
	idx int64
	j   J
}

type item[J any] struct {
	seq int64
	j   J
}

type outcome[J any] struct {
	seq int64
	j   J
	r   Result
}

// New returns a writer for the map c describes.
func New[J any](c Config[J]) *Writer[J] {
	w := &Writer[J]{c: c, log: c.Logger, inflight: map[block.ID]*upload{},
		committedPages: int(c.FirstPage), committedPos: c.FirstPage * blockmap.PageEntries,
		seen: map[block.ID]bool{}, dedup: map[block.ID]found[J]{}}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	if w.c.Workers < 1 {
		w.c.Workers = 1
	}
	w.c.Clock = clock.Or(w.c.Clock)
	w.next = w.committedPos
	return w
}

// Run runs reader, workers and committer until every position is added
// to the map, committing along the way. It returns nil when all are;
// what the last commit has not covered the caller commits with Commit.
// On an error (of the reader, a worker, a commit, or ctx) the version
// keeps its last commit, an exact prefix.
func (w *Writer[J]) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	n := w.c.Workers
	// window bounds how far the reader runs ahead of the committer, so
	// the reorder ring stays small.
	window := make(chan struct{}, 4*(n+2))
	jobs := make(chan item[J], n+2)
	results := make(chan outcome[J], n+2)
	w.lastCommit = w.c.Clock.Now()

	g.Go(func() error {
		defer close(jobs)
		var seq int64
		return w.c.Read(ctx, func(j J) error {
			select {
			case window <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			}
			select {
			case jobs <- item[J]{seq: seq, j: j}:
				seq++
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	})
	// Workers run in g, so that a worker's error cancels ctx at once: the
	// committer would otherwise wait forever for the failed position, and
	// the reader for room in the window.
	var workers sync.WaitGroup
	for range n {
		workers.Add(1)
		g.Go(func() error {
			defer workers.Done()
			var buf []byte
			if w.c.BufSize > 0 {
				buf = make([]byte, 0, w.c.BufSize)
			}
			for it := range jobs {
				r, err := w.c.Work(ctx, it.j, buf)
				if err != nil {
					w.workerErr.CompareAndSwap(nil, &err)
					return err
				}
				select {
				case results <- outcome[J]{seq: it.seq, j: it.j, r: r}:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		workers.Wait()
		close(results)
		return nil
	})
	g.Go(func() error {
		return w.committer(ctx, window, results)
	})
	return g.Wait()
}

// committer takes the results in order (seq) and adds them to the map.
func (w *Writer[J]) committer(ctx context.Context, window chan struct{}, results <-chan outcome[J]) error {
	// A job holds its place in the window until its result is taken, so
	// at most cap(window) results are outstanding: a ring that size
	// holds them by seq.
	ring := make([]outcome[J], cap(window))
	have := make([]bool, cap(window))
	var next int64
	for o := range results {
		k := o.seq % int64(len(ring))
		ring[k], have[k] = o, true
		for {
			k := next % int64(len(ring))
			if !have[k] {
				break
			}
			o := ring[k]
			var zero outcome[J]
			ring[k], have[k] = zero, false
			next++
			<-window
			if err := w.take(ctx, o.j, o.r); err != nil {
				return err
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if w.next != w.c.End {
		if werr := w.workerErr.Load(); werr != nil {
			return *werr
		}
		return fmt.Errorf("internal error: the map of version %s ended at block %d of %d", w.c.UID, w.next, w.c.End)
	}
	return nil
}

// take adds the next result to the map and commits when it is time.
func (w *Writer[J]) take(ctx context.Context, j J, r Result) error {
	idx := w.next
	width := int64(1)
	if r.Kind == Page {
		width = int64(len(r.Entries))
	}
	if idx+width > w.c.End {
		return fmt.Errorf("internal error: the map of version %s has %d positions, a result fills %d from %d", w.c.UID, w.c.End, width, idx)
	}
	w.count(idx, j, r)
	if err := w.add(idx, j, r); err != nil {
		return err
	}
	w.next += width
	if w.c.Progress != nil {
		w.c.Progress(w.next)
	}
	if len(w.full) >= 8 || w.c.Clock.Now().Sub(w.lastCommit) >= w.c.CommitInterval {
		return w.Commit(ctx, false)
	}
	return nil
}

// count gives Count the positions of r from Counted on.
func (w *Writer[J]) count(idx int64, j J, r Result) {
	if w.c.Count == nil {
		return
	}
	if skip := w.c.Counted - idx; skip > 0 {
		if r.Kind != Page || skip >= int64(len(r.Entries)) {
			return
		}
		r.Entries = r.Entries[skip:]
		idx += skip
	}
	w.c.Count(idx, j, r)
}

func (w *Writer[J]) add(idx int64, j J, r Result) error {
	id := r.ID
	switch r.Kind {
	case Page:
		if len(w.tail) != 0 {
			return fmt.Errorf("internal error: reused page at block %d follows a partial page", idx)
		}
		w.full = append(w.full, metastore.ReusePage(r.Page))
		w.fullPos += int64(len(r.Entries))
		return nil
	case Sparse:
		id = block.Sparse
	case Held:
	case Found:
		if _, ok := w.dedup[id]; !ok {
			w.dedup[id] = found[J]{idx: idx, j: j}
		}
	case Shared, Stored:
		if !w.seen[id] {
			w.seen[id] = true
			w.newRecs = append(w.newRecs, r.Rec)
		}
	default:
		return fmt.Errorf("internal error: result of kind %d at block %d", r.Kind, idx)
	}
	w.tail = append(w.tail, id)
	if len(w.tail) == blockmap.PageEntries {
		w.full = append(w.full, metastore.NewPage(w.tail))
		w.fullPos += blockmap.PageEntries
		w.tail = nil
	}
	return nil
}

// Store makes sure the store holds block id, which job j's position
// names, and returns the position's Result: Found (recorded and valid,
// or known so: have), Shared (another worker of this run stores it: wait
// for it and share its record) or Stored (stored now). data is the
// block's plaintext; when nil, Config.Fetch reads it into buf, only if the
// block must be stored. have says the caller knows the store to hold the
// block valid (looked up a moment ago), which saves the lookup.
func (w *Writer[J]) Store(ctx context.Context, j J, id block.ID, have bool, data, buf []byte) (Result, error) {
	if id.IsSparse() {
		return Result{Kind: Sparse}, nil
	}
	w.mu.Lock()
	if u, ok := w.inflight[id]; ok {
		w.mu.Unlock()
		select {
		case <-u.done:
		case <-ctx.Done():
			return Result{}, ctx.Err()
		}
		if u.err != nil {
			return Result{}, u.err
		}
		if u.found {
			// Recorded before: deduplicate against it as the first worker
			// did, with nothing to commit.
			return Result{Kind: Found, ID: id}, nil
		}
		return Result{Kind: Shared, ID: id, Rec: u.rec}, nil
	}
	u := &upload{done: make(chan struct{})}
	w.inflight[id] = u
	w.mu.Unlock()

	if !have {
		// The caller may have looked a while ago: this run (or another
		// writer) may have committed the block since.
		rec, ok, err := w.c.DB.LookupBlock(id)
		if err != nil {
			return w.fail(id, u, w.wrap(err))
		}
		have = ok && !rec.Invalid
	}
	if have {
		// Nothing to share with other workers. (Set found before close:
		// waiters read it once done is closed.)
		u.found = true
		close(u.done)
		w.forget(id)
		return Result{Kind: Found, ID: id}, nil
	}
	if data == nil {
		if w.c.Fetch == nil {
			return w.fail(id, u, fmt.Errorf("internal error: block %s to store has no data and no Fetch", id.Short()))
		}
		var err error
		if data, err = w.c.Fetch(ctx, j, buf); err != nil {
			return w.fail(id, u, err)
		}
	}
	rec, err := w.c.Store.Put(ctx, id, data)
	if err != nil {
		return w.fail(id, u, w.wrap(err))
	}
	u.rec = rec
	close(u.done) // stays in inflight until committed
	return Result{Kind: Stored, ID: id, Rec: rec}, nil
}

func (w *Writer[J]) fail(id block.ID, u *upload, err error) (Result, error) {
	u.err = err
	close(u.done)
	w.forget(id)
	return Result{}, err
}

func (w *Writer[J]) forget(id block.ID) {
	w.mu.Lock()
	delete(w.inflight, id)
	w.mu.Unlock()
}

// wrap names the target store in an error of its own.
func (w *Writer[J]) wrap(err error) error {
	if w.c.Name == "" || err == nil {
		return err
	}
	return fmt.Errorf("%s: %w", w.c.Name, err)
}

// msg names the target store in a log message.
func (w *Writer[J]) msg(s string) string {
	if w.c.Name == "" {
		return s
	}
	return w.c.Name + ": " + s
}
