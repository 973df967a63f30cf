package transfer

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/keyring"
	"github.com/backy/backy/internal/atomicfile"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/catalog"
	"github.com/backy/backy/versions/manifest"
)

// ErrHealthy: rebuild-metastore found a metastore that opens and checks
// clean, and was not forced.
var ErrHealthy = errors.New("the metastore is healthy")

// ErrLoss: the rebuilt metastore would lack versions the old metastore
// has, and the loss was not accepted; nothing was changed.
var ErrLoss = errors.New("rebuild-metastore would lose versions the old metastore has")

// OpenCatalog opens the catalog of the backend once the (new) metastore
// db holds the key registrations: the caller loads its keys against them.
type OpenCatalog func(ctx context.Context, db *metastore.DB) (*catalog.Catalog, error)

// RebuildOptions configures Rebuild.
type RebuildOptions struct {
	// Force replaces a healthy metastore (it is kept aside all the same).
	Force bool
	// AcceptLoss puts the rebuilt metastore in place even when it lacks
	// versions the old one has (listed in RebuildResult.Lost); without
	// it such a rebuild fails with ErrLoss and changes nothing.
	AcceptLoss bool
	// Salvager reads the old metastore (it may be damaged); InProcess
	// when nil.
	Salvager Salvager
	Logger   *slog.Logger
	// Clock stamps the name the old metastore is kept under
	// (.replaced-<UTC time>) and times the run; clock.System when nil.
	Clock clock.Clock
}

// LostVersion is a version the old metastore has that the rebuild could
// not bring back.
type LostVersion struct {
	UID    string    `json:"uid"`
	Volume string    `json:"volume"`
	Date   time.Time `json:"date"`
	Status string    `json:"status"`
	// Why says why neither the backend nor the old metastore gave it.
	Why string `json:"why"`
}

// RebuildResult describes a rebuild.
type RebuildResult struct {
	Versions int `json:"versions"`
	// Unreadable lists versions of which no snapshot could be read.
	Unreadable []string `json:"unreadable,omitempty"`
	// OlderSnapshots counts versions restored from an older snapshot
	// because the newest was damaged or incomplete.
	OlderSnapshots int   `json:"older_snapshots"`
	Blocks         int64 `json:"blocks"`
	Records        int64 `json:"block_records"`
	// Conflicts counts blocks for which two snapshots named different
	// objects (the newer snapshot's record was kept).
	Conflicts int `json:"conflicts"`
	// KeptAside is where the old metastore now is ("" when there was none).
	KeptAside  string `json:"kept_aside,omitempty"`
	OldProblem string `json:"old_metastore_problem,omitempty"`
	// OldVersions counts the versions the old metastore has (-1: there
	// was none, or it could not be read; OldUnreadable says why).
	OldVersions   int    `json:"old_metastore_versions"`
	OldUnreadable string `json:"old_metastore_unreadable,omitempty"`
	// Recovered lists versions the backend could not give back (no
	// snapshot, or none readable) that were taken from the old metastore;
	// their metadata is written to the backend again right after.
	Recovered []string `json:"recovered_from_old_metastore,omitempty"`
	// Lost lists versions the old metastore has that are not in the new
	// one (only with AcceptLoss is such a metastore put in place).
	Lost            []LostVersion `json:"lost,omitempty"`
	DurationSeconds float64       `json:"duration_seconds"`
}

// Rebuild recreates the metastore at dbPath from the data backend alone:
// the store identity, the key registrations and the newest readable
// snapshot of every version. The new metastore is built beside the old
// under a temporary name, checked, and renamed into place; the old one
// (if any) is kept as <dbPath>.replaced-<time>. A metastore that opens and
// checks clean is refused without o.Force. The store is locked
// exclusively throughout, so no other backy command runs meanwhile. open
// gives the catalog the snapshots are read through.
//
// An old metastore, damaged or not, is read (o.Salvager) and compared: a
// version it has that the backend cannot give back (no snapshot, or none
// readable) is taken from it when its metadata reads completely there
// (RebuildResult.Recovered; it counts as changed, so the next sync writes
// its snapshot again), and listed in RebuildResult.Lost otherwise. A
// rebuild that would lose versions fails with ErrLoss, returning the
// result, and changes nothing, unless o.AcceptLoss. Key registrations
// missing from the backend are taken from the old metastore too, and
// every registration the new metastore holds is written back to keys/.
func Rebuild(ctx context.Context, dbPath string, be backend.Backend, open OpenCatalog, o RebuildOptions) (*RebuildResult, error) {
	o.Clock = clock.Or(o.Clock)
	start := o.Clock.Now()
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Salvager == nil {
		o.Salvager = InProcess{}
	}
	ident, sid, err := readIdentity(ctx, be)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(dbPath), 0o700); err != nil {
		return nil, err
	}
	lk, err := metastore.LockStoreExclusive(dbPath)
	if err != nil {
		return nil, err
	}
	defer lk.Unlock()
	res := &RebuildResult{OldVersions: -1}
	var old *Survey
	if _, err := os.Stat(dbPath); err == nil {
		problem, err := metastore.Inspect(dbPath, sid)
		if err != nil {
			return nil, err
		}
		if problem == nil && !o.Force {
			return nil, fmt.Errorf("%w: %s opens and checks clean; use --force to rebuild it anyway (it is kept aside)", ErrHealthy, dbPath)
		}
		if problem != nil {
			res.OldProblem = problem.Error()
			// Reported in the result; a log line too for the log file.
			o.Logger.Info("the metastore is damaged; rebuilding it from the backend", "metastore", dbPath, "problem", problem)
		}
		if old, err = surveyOld(ctx, dbPath, ident.BlockSize, sid, o, res); err != nil {
			return nil, err
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}

	tmp := dbPath + ".rebuilding-" + strconv.FormatUint(rand.Uint64(), 36) // unique, not a time
	// The store's creation time is the identity's, not the rebuild's.
	db, err := metastore.Create(tmp, ident.BlockSize, sid, metastore.Options{Now: func() time.Time { return ident.Created }})
	if err != nil {
		return nil, err
	}
	cleanup := func() {
		_ = db.Close()
		_ = os.Remove(tmp)
		_ = os.RemoveAll(metastore.LockDir(tmp))
	}
	err = importKeyObjects(ctx, db, be)
	if err == nil && old != nil {
		// A registration lost from the backend (keys/<N>.json) may
		// still be in the old metastore: a passphrase needs it.
		err = registerOldKeys(db, old, o.Logger)
	}
	var cat *catalog.Catalog
	if err == nil {
		cat, err = open(ctx, db)
	}
	if err == nil {
		err = rebuildInto(ctx, db, cat, res, o.Logger)
	}
	if err == nil && old != nil {
		err = compareOld(ctx, db, dbPath, old, o, res)
	}
	if err == nil && len(res.Lost) > 0 && !o.AcceptLoss {
		cleanup()
		res.DurationSeconds = o.Clock.Since(start).Seconds()
		return res, lossError(dbPath, res.Lost)
	}
	if err == nil {
		// Registrations that came from the snapshots or the old
		// metastore go back to keys/ too.
		err = writeKeyObjects(ctx, db, be, o.Logger)
	}
	if err != nil {
		cleanup()
		return nil, err
	}
	problems, err := db.Check()
	if err == nil && len(problems) > 0 {
		err = fmt.Errorf("the rebuilt metastore fails its check: %w", errors.Join(problems...))
	}
	if err != nil {
		cleanup()
		return nil, err
	}
	_ = db.Close()
	_ = os.RemoveAll(metastore.LockDir(tmp))
	if _, err := os.Stat(dbPath); err == nil {
		base := dbPath + ".replaced-" + o.Clock.Now().UTC().Format("20060102T150405Z")
		aside := base
		for i := 2; ; i++ {
			err := os.Link(dbPath, aside)
			if err == nil {
				break
			}
			if !errors.Is(err, os.ErrExist) || i > 100 {
				_ = os.Remove(tmp)
				return nil, fmt.Errorf("keeping the old metastore aside as %s: %w", aside, err)
			}
			aside = fmt.Sprintf("%s-%d", base, i)
		}
		res.KeptAside = aside
	}
	if err := atomicfile.Move(tmp, dbPath, atomicfile.Options{}); err != nil {
		_ = os.Remove(tmp)
		return nil, fmt.Errorf("putting the rebuilt metastore in place: %w", err)
	}
	res.DurationSeconds = o.Clock.Since(start).Seconds()
	return res, nil
}

// rebuildInto fills the empty metastore db from the backend.
func rebuildInto(ctx context.Context, db *metastore.DB, cat *catalog.Catalog, res *RebuildResult, log *slog.Logger) error {
	all, err := cat.List(ctx)
	if err != nil {
		return err
	}
	// Newest snapshots first: where two snapshots name different objects
	// for one block, the newer one's record is the one kept.
	uids := make([]string, 0, len(all))
	for uid := range all {
		uids = append(uids, uid)
	}
	sort.Slice(uids, func(i, j int) bool {
		a, b := all[uids[i]][0].Gen, all[uids[j]][0].Gen
		if a != b {
			return a > b
		}
		return uids[i] < uids[j]
	})
	const batch = 32
	for lo := 0; lo < len(uids); lo += batch {
		chunk := uids[lo:min(lo+batch, len(uids))]
		err := importBatch(ctx, db, cat, all, chunk, res)
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Something in the batch is damaged (or worse): one by one.
		for _, uid := range chunk {
			if err := ctx.Err(); err != nil {
				return err
			}
			st, err := importLatest(ctx, db, cat, all[uid], log)
			if errors.Is(err, catalog.ErrNoSnapshot) {
				log.Error("no readable metadata of the version in the backend; it is not rebuilt", "version", uid, "err", err)
				res.Unreadable = append(res.Unreadable, uid)
				continue
			}
			if err != nil {
				return fmt.Errorf("version %s: %w", uid, err)
			}
			res.Versions++
			res.Blocks += st.blocks
			res.Records += st.records
			res.Conflicts += st.conflicts
			if st.older {
				res.OlderSnapshots++
			}
		}
	}
	return nil
}

// importKeyObjects registers the key registrations kept in the backend
// (keys/<N>.json). The snapshots carry them too; these cover versions
// whose snapshots are all unreadable and keys not yet used.
func importKeyObjects(ctx context.Context, db *metastore.DB, be backend.Backend) error {
	var names []string
	err := be.List(ctx, "keys/", func(info backend.Info) error {
		names = append(names, info.Name)
		return nil
	})
	if err != nil {
		return fmt.Errorf("listing key registrations: %w", err)
	}
	var keys []manifest.KeyReg
	for _, n := range names {
		v, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(n, "keys/"), ".json"), 10, 16)
		if err != nil || v == 0 || keyring.ObjectName(uint16(v)) != n {
			continue
		}
		raw, err := be.Get(ctx, n, nil)
		if err != nil {
			return fmt.Errorf("reading key registration %s: %w", n, err)
		}
		reg, err := keyring.ParseRegistration(raw)
		if err != nil || reg.EncVersion != uint16(v) {
			return fmt.Errorf("key registration %s is damaged: %v", n, err)
		}
		keys = append(keys, manifest.KeyReg{EncVersion: uint16(v), Registration: raw})
	}
	return db.Import(func(im *metastore.Importer) error { return registerKeys(im, keys) })
}

type snapStats struct {
	blocks, records int64
	conflicts       int
	older           bool
}

// importLatest imports the newest snapshot of refs (newest first) that
// reads completely, each attempt in one transaction.
func importLatest(ctx context.Context, db *metastore.DB, cat *catalog.Catalog, refs []catalog.Ref, log *slog.Logger) (snapStats, error) {
	var errs []error
	for i, ref := range refs {
		st, err := importSnapshot(ctx, db, cat, ref)
		if err == nil {
			st.older = i > 0
			return st, nil
		}
		if ctx.Err() != nil || !catalog.Skippable(err) {
			return st, err
		}
		log.Warn("skipping an unreadable snapshot of version metadata", "snapshot", ref.Dir(), "err", err)
		errs = append(errs, err)
	}
	return snapStats{}, fmt.Errorf("%w: %w", catalog.ErrNoSnapshot, errors.Join(errs...))
}

// importSnapshot imports one snapshot in one transaction: nothing of it
// stays unless all of it read and verified.
func importSnapshot(ctx context.Context, db *metastore.DB, cat *catalog.Catalog, ref catalog.Ref) (snapStats, error) {
	var st snapStats
	err := db.Import(func(im *metastore.Importer) error {
		var err error
		st, err = importSnapshotTx(ctx, im, db, cat, ref)
		return err
	})
	return st, err
}

// importSnapshotTx imports snapshot ref through im.
func importSnapshotTx(ctx context.Context, im *metastore.Importer, db *metastore.DB, cat *catalog.Catalog, ref catalog.Ref) (snapStats, error) {
	var st snapStats
	if !ref.Contiguous {
		return st, fmt.Errorf("%w: snapshot %s lacks chunks", manifest.ErrInvalid, ref.Dir())
	}
	mr, err := manifest.NewReader(cat.Open(ctx, ref))
	if err != nil {
		return st, err
	}
	if err := checkStore(db, mr.Store()); err != nil {
		return st, err
	}
	if err := registerKeys(im, mr.Keys()); err != nil {
		return st, err
	}
	n := 0
	for {
		v, err := mr.NextVersion()
		if err == io.EOF {
			break
		}
		if err != nil {
			return st, err
		}
		if n++; n > 1 || v.UID != ref.UID {
			return st, fmt.Errorf("%w: snapshot %s holds version %s", manifest.ErrInvalid, ref.Dir(), v.UID)
		}
		if err := im.CreateVersion(v); err != nil {
			return st, err
		}
		for {
			p, err := mr.NextPage()
			if err == io.EOF {
				break
			}
			if err != nil {
				return st, err
			}
			c, err := im.AppendPage(v.UID, p.IDs, p.Records)
			if err != nil {
				return st, err
			}
			st.conflicts += c
			st.blocks += int64(len(p.IDs))
			st.records += int64(len(p.Records))
		}
	}
	if n == 0 {
		return st, fmt.Errorf("%w: snapshot %s holds no version", manifest.ErrInvalid, ref.Dir())
	}
	if err := im.SetSnapshot(ref.UID, ref.Gen, ref.Tag); err != nil {
		return st, err
	}
	if st.conflicts > 0 {
		// Its snapshot names objects the metastore does not: write a
		// fresh one.
		return st, im.MarkChanged(ref.UID)
	}
	return st, nil
}

// importBatch imports the newest snapshot of each of uids in one
// transaction (fewer commits: the rebuilt metastore is a new file, so a
// batch needs no finer atomicity). Any failure rolls the batch back and
// the caller imports its versions one by one.
func importBatch(ctx context.Context, db *metastore.DB, cat *catalog.Catalog, all map[string][]catalog.Ref, uids []string, res *RebuildResult) error {
	var sum RebuildResult
	err := db.Import(func(im *metastore.Importer) error {
		sum = RebuildResult{}
		for _, uid := range uids {
			if err := ctx.Err(); err != nil {
				return err
			}
			st, err := importSnapshotTx(ctx, im, db, cat, all[uid][0])
			if err != nil {
				return err
			}
			sum.Versions++
			sum.Blocks += st.blocks
			sum.Records += st.records
			sum.Conflicts += st.conflicts
		}
		return nil
	})
	if err == nil {
		res.Versions += sum.Versions
		res.Blocks += sum.Blocks
		res.Records += sum.Records
		res.Conflicts += sum.Conflicts
	}
	return err
}

func readIdentity(ctx context.Context, be backend.Backend) (blockstore.Identity, [16]byte, error) {
	var sid [16]byte
	ident, err := blockstore.ReadIdentity(ctx, be)
	if err != nil {
		return ident, sid, err
	}
	b, err := hex.DecodeString(ident.StoreID)
	if err != nil || len(b) != 16 || ident.BlockSize <= 0 {
		return ident, sid, fmt.Errorf("%w: store.json is malformed", blockstore.ErrNoIdentity)
	}
	copy(sid[:], b)
	return ident, sid, nil
}

// Scratch creates, in the directory dir, an empty metastore of the store
// in be with the key registrations the backend keeps: enough to load keys
// and read the version snapshots with no metastore at all. The caller
// closes it and removes dir.
func Scratch(ctx context.Context, dir string, be backend.Backend) (*metastore.DB, error) {
	ident, sid, err := readIdentity(ctx, be)
	if err != nil {
		return nil, err
	}
	db, err := metastore.Create(filepath.Join(dir, "backy.db"), ident.BlockSize, sid, metastore.Options{})
	if err != nil {
		return nil, err
	}
	if err := importKeyObjects(ctx, db, be); err != nil {
		_ = db.Close()
		return nil, err
	}
	return db, nil
}

// FromBackend builds, in the directory dir, a throwaway metastore holding
// only version uid, from the newest readable snapshot in the backend:
// enough to restore the version with no metastore at all. The caller
// closes the returned DB and removes dir.
func FromBackend(ctx context.Context, dir string, be backend.Backend, open OpenCatalog, uid string, log *slog.Logger) (*metastore.DB, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	db, err := Scratch(ctx, dir, be)
	if err != nil {
		return nil, err
	}
	cat, err := open(ctx, db)
	var refs []catalog.Ref
	if err == nil {
		refs, err = cat.ListVersion(ctx, uid)
	}
	if err == nil && len(refs) == 0 {
		err = fmt.Errorf("%w: %s", catalog.ErrNoSnapshot, uid)
	}
	if err == nil {
		_, err = importLatest(ctx, db, cat, refs, log)
	}
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return db, nil
}
