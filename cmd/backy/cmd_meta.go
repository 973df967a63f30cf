package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/cmd/backy/internal/ui"
	"github.com/backy/backy/internal/atomicfile"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/catalog"
	"github.com/backy/backy/versions/source"
	"github.com/backy/backy/versions/transfer"
)

func cmdExport(e *env) *cli.Command {
	return &cli.Command{
		Name:      "export",
		Usage:     "write versions' metadata (block maps and block records) to a file or standard output",
		ArgsUsage: "VERSION...",
		Description: "Writes the versions, their block maps and the records of their blocks in backy's\n" +
			"version metadata format (docs/FORMAT.md), enough for 'backy import' to register them in\n" +
			"another metastore over the same data backend. Memory does not grow with the versions' size.\n" +
			"The data backend keeps the same metadata of every version by itself (see rebuild-metastore).",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "write to `FILE` (made under a temporary name, renamed when complete) instead of standard output"},
			&cli.BoolFlag{Name: "force", Usage: "replace an existing output file"},
		},
		Action: e.withStore(1, -1, "one or more VERSIONs", func(c *cli.Context, s *store) error {
			uids := c.Args().Slice()
			for _, uid := range uids {
				if _, err := versionArg(s.db, uid); err != nil {
					return err
				}
			}
			out := c.String("output")
			if out == "" || out == "-" {
				if f, ok := e.stdout.(*os.File); ok && ui.IsTerminal(f) {
					return usageErr("export writes binary data: redirect standard output or use -o FILE")
				}
				res, err := transfer.Export(c.Context, s.db, uids, e.stdout, "backy "+backyVersion())
				if err == nil {
					e.log.Info("exported", "versions", len(res.Versions), "bytes", res.Bytes)
				}
				return err
			}
			res, err := exportFile(c.Context, e, s.db, uids, out, c.Bool("force"))
			if err != nil {
				return err
			}
			if e.json {
				return ui.JSON(e.stdout, map[string]any{"file": out, "versions": res.Versions, "bytes": res.Bytes})
			}
			fmt.Fprintf(e.stdout, "exported %d version(s) to %s (%s)\n", len(res.Versions), out, ui.Bytes(res.Bytes))
			return nil
		}),
	}
}

// errOutputExists: export -o names a file that exists, without --force.
var errOutputExists = errors.New("the output file exists")

// exportTempKind names an export's temporary files:
// ".<file>.backy-export-<hex>".
const exportTempKind = "backy-export"

// exportFile writes the export under a temporary name beside path (locked
// while it is written, so that the next export to path removes it if this
// one is killed), fsyncs it and renames it into place: a crash leaves no
// partial file. Without force an existing file is never replaced, not even
// one that appears while the export runs.
func exportFile(ctx context.Context, e *env, db *metastore.DB, uids []string, path string, force bool) (*transfer.ExportResult, error) {
	exists := func() error {
		return fmt.Errorf("%w: %s (use --force to replace it, or -o another file)", errOutputExists, path)
	}
	if _, err := os.Lstat(path); err == nil && !force {
		return nil, exists()
	}
	if err := source.CheckDir(path, "export file"); err != nil {
		return nil, err
	}
	stale, err := source.RemoveStaleTemps(path, exportTempKind)
	for _, st := range stale {
		e.log.Warn("removed a temporary file that an interrupted export to the same file left", "file", st.Path, "bytes", st.Size)
	}
	if err != nil {
		e.log.Warn("could not remove the temporary files of interrupted exports to the same file", "err", err)
	}
	f, err := source.CreateTemp(path, exportTempKind, 0o600)
	if err != nil {
		return nil, fmt.Errorf("creating the export file: %w", err)
	}
	res, err := transfer.Export(ctx, db, uids, f, "backy "+backyVersion())
	if err != nil {
		_ = os.Remove(f.Name())
		_ = f.Close()
		return nil, err
	}
	// Put in place while still open (Locked): the lock that marks it a
	// live export's is held until it has its final name. Without force a
	// file that appeared meanwhile is not replaced.
	err = atomicfile.Commit(ctx, f, path, atomicfile.Options{NoReplace: !force, Locked: true})
	if !force && errors.Is(err, fs.ErrExist) {
		return nil, exists()
	}
	if err != nil {
		return nil, err
	}
	return res, nil
}

func cmdImport(e *env) *cli.Command {
	return &cli.Command{
		Name:      "import",
		Usage:     "register versions from an export of this store's metadata",
		ArgsUsage: "[FILE|-]",
		Description: "Reads an export ('backy export') of versions of this store (same data backend), validates\n" +
			"all of it (format, checksum, store, keys, uids, and that every object it names is in the data\n" +
			"backend with its size, unless --no-verify), then adds the versions in one transaction: all or\n" +
			"nothing. Versions that exist already are refused. Nothing is ever queued for deletion.\n" +
			"A block the metastore knows is imported with the metastore's record (so an export made before\n" +
			"migrate-encryption imports after it). With no metastore at all, over a data backend that holds\n" +
			"a store, the import makes that store's metastore (put in place only if the import succeeds).",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "no-verify", Usage: "do not check that the objects the export names are in the data backend"},
		},
		Action: func(c *cli.Context) error {
			if err := args(c, 0, 1, "at most one FILE"); err != nil {
				return err
			}
			ctx := c.Context
			open, done, err := importSource(c.Args().First(), os.Stdin)
			if err != nil {
				return err
			}
			defer done()
			verify := !c.Bool("no-verify")
			res, adopted, err := e.importAdopting(ctx, open, verify)
			if err != nil {
				return err
			}
			s, err := e.openStore(ctx)
			if err != nil {
				return err
			}
			defer s.Close()
			if !adopted {
				if res, err = e.importInto(ctx, s, open, verify); err != nil {
					return err
				}
			}
			e.log.Info("versions imported", "versions", res.Versions, "blocks", res.Blocks, "records", res.Records, "objects_checked", res.ObjectsChecked)
			serr := s.syncMeta(ctx, res.Versions...)
			if e.json {
				if err := ui.JSON(e.stdout, res); err != nil {
					return err
				}
			} else {
				for _, uid := range res.Versions {
					fmt.Fprintf(e.stdout, "imported %s\n", uid)
				}
			}
			return serr
		},
	}
}

// importInto imports the stream open returns into the store s.
func (e *env) importInto(ctx context.Context, s *store, open func() (io.ReadCloser, error), verify bool) (*transfer.ImportResult, error) {
	// No orphan sweep may delete an object between the check and the
	// commit.
	wlk, err := s.db.LockWriter(func(err error) { e.log.Warn("waiting for the writers lock", "reason", err) })
	if err != nil {
		return nil, err
	}
	defer wlk.Unlock()
	o := transfer.ImportOptions{Workers: s.ioWorkers(), Logger: e.log}
	if verify {
		st, err := blockstore.New(s.be, blockstore.Options{})
		if err != nil {
			return nil, err
		}
		defer st.Close()
		o.Objects = st
	}
	return transfer.Import(ctx, s.db, open, o)
}

// importAdopting imports into a new metastore of the store the data
// backend holds when the configured metastore does not exist (backy2's
// upgrade procedure: export every version, move the metastore away,
// import the exports): the metastore is made with the store's identity
// and key registrations and put in place only if the import succeeds.
// adopted is false (and nothing done) when a metastore exists or the
// backend holds no store: the caller imports as usual.
func (e *env) importAdopting(ctx context.Context, open func() (io.ReadCloser, error), verify bool) (res *transfer.ImportResult, adopted bool, err error) {
	path := e.cfg.Meta.Path
	if _, err := os.Stat(path); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	be, err := newBackend(ctx, e.cfg, e.log, false)
	if err != nil {
		if errors.Is(err, errStoreMismatch) {
			// No data directory either: no store to adopt.
			return nil, false, nil
		}
		return nil, false, err
	}
	defer be.Close()
	lk, err := metastore.LockCreate(path)
	if err != nil {
		return nil, false, err
	}
	defer lk.Unlock()
	var sid [16]byte
	err = transfer.Adopt(ctx, path, be, func(db *metastore.DB) error {
		sid = db.StoreID()
		// The backend is closed by the caller, not by this store.
		s := &store{e: e, db: db, be: be}
		var err error
		res, err = e.importInto(ctx, s, open, verify)
		return err
	})
	switch {
	case err == nil:
		fmt.Fprintf(e.stderr, "backy: the metastore %s did not exist: made it for the store %x in %s, with the imported versions\n", path, sid, dataLocation(e.cfg))
		e.log.Info("created the metastore of the data backend's store with the imported versions", "metastore", path, "data", dataLocation(e.cfg), "versions", len(res.Versions))
		return res, true, nil
	case errors.Is(err, blockstore.ErrNoIdentity):
		// The backend holds no store: the usual open says what to do.
		return nil, false, nil
	}
	return nil, false, err
}

// importSource returns how to open the import's bytes (twice: once to
// check, once to apply). Standard input is spooled to a temporary file.
func importSource(name string, stdin io.Reader) (func() (io.ReadCloser, error), func(), error) {
	if name != "" && name != "-" {
		if _, err := os.Stat(name); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				// Not found (66), as a missing backup source.
				return nil, nil, fmt.Errorf("%w: import file %s does not exist", source.ErrNotFound, name)
			}
			return nil, nil, fmt.Errorf("import file: %w", err)
		}
		return func() (io.ReadCloser, error) { return os.Open(name) }, func() {}, nil
	}
	f, err := os.CreateTemp("", "backy-import-*")
	if err != nil {
		return nil, nil, fmt.Errorf("spooling standard input: %w", err)
	}
	done := func() { _ = f.Close(); _ = os.Remove(f.Name()) }
	if _, err := io.Copy(f, stdin); err != nil {
		done()
		return nil, nil, fmt.Errorf("reading standard input: %w", err)
	}
	open := func() (io.ReadCloser, error) {
		return io.NopCloser(io.NewSectionReader(f, 0, 1<<62)), nil
	}
	return open, done, nil
}

func cmdRebuildMetastore(e *env) *cli.Command {
	return &cli.Command{
		Name:  "rebuild-metastore",
		Usage: "recreate a lost or damaged metastore from the data backend alone",
		Description: "Reads the store identity, the key registrations and the newest readable metadata of every\n" +
			"version from the data backend and builds a new metastore from them (versions, block maps, block\n" +
			"records, reference counts). It is built under a temporary name, checked, and renamed into place;\n" +
			"an existing metastore is kept as <metastore>.replaced-<time>. A metastore that opens and checks\n" +
			"clean is refused without --force. No other backy command runs on the store meanwhile.\n" +
			"Every version the existing metastore has (damaged or not, as far as it reads) is compared: one\n" +
			"the data backend cannot give back is taken from the old metastore when its metadata reads\n" +
			"completely there; if that fails too, the versions are listed and nothing is changed (exit 66)\n" +
			"unless --accept-loss. Versions whose backup had not completed are not in the backend's metadata.",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "force", Usage: "rebuild even a metastore that checks clean (it is kept aside)"},
			&cli.BoolFlag{Name: "accept-loss", Usage: "put the rebuilt metastore in place even if it lacks versions the old one has (listed; the old one is kept aside)"},
		},
		Action: func(c *cli.Context) error {
			if err := args(c, 0, 0, "no arguments"); err != nil {
				return err
			}
			ctx := c.Context
			be, err := newBackend(ctx, e.cfg, e.log, false)
			if err != nil {
				return err
			}
			defer be.Close()
			var stores []*blockstore.Store
			defer func() {
				for _, st := range stores {
					st.Close()
				}
			}()
			open := func(ctx context.Context, db *metastore.DB) (*catalog.Catalog, error) {
				st, err := recoveringStore(ctx, e, db, be)
				if err != nil {
					return nil, err
				}
				stores = append(stores, st)
				return catalog.New(st, "backy "+backyVersion(), e.log), nil
			}
			prog := ui.NewProgress(os.Stderr, "rebuild-metastore")
			res, err := transfer.Rebuild(ctx, e.cfg.Meta.Path, be, open, transfer.RebuildOptions{
				Force: c.Bool("force"), AcceptLoss: c.Bool("accept-loss"), Salvager: newSalvager(), Logger: e.log, Clock: clock.System})
			prog.Done()
			if errors.Is(err, transfer.ErrLoss) && res != nil {
				// What would be lost, on stdout; the error says the rest.
				if perr := e.printRebuild(res, false); perr != nil {
					return perr
				}
			}
			if err != nil {
				return err
			}
			e.log.Info("metastore rebuilt", "metastore", e.cfg.Meta.Path, "versions", res.Versions, "unreadable", res.Unreadable,
				"older_snapshots", res.OlderSnapshots, "block_records", res.Records, "kept_aside", res.KeptAside,
				"recovered_from_old_metastore", res.Recovered, "lost", len(res.Lost))
			// Versions whose snapshots disagreed, or that came from the
			// old metastore, get fresh ones.
			s, err := e.openExisting(ctx)
			if err != nil {
				return fmt.Errorf("the metastore was rebuilt, but opening it failed: %w", err)
			}
			defer s.Close()
			serr := s.syncMeta(ctx)
			if err := e.printRebuild(res, true); err != nil {
				return err
			}
			if len(res.Unreadable) > 0 && serr == nil {
				serr = fmt.Errorf("%w: %d version(s) could not be rebuilt: %s", catalog.ErrNoSnapshot, len(res.Unreadable), strings.Join(res.Unreadable, " "))
			}
			return serr
		},
	}
}

// printRebuild prints the outcome of a rebuild (done: the new metastore
// is in place; else it was refused for the versions it would lose).
func (e *env) printRebuild(res *transfer.RebuildResult, done bool) error {
	if e.json {
		return ui.JSON(e.stdout, res)
	}
	none := func(s string) string {
		if s == "" {
			return "none"
		}
		return s
	}
	list := func(uids []string) string { return none(strings.Join(uids, " ")) }
	old := "none (there was no metastore)"
	switch {
	case res.OldUnreadable != "":
		old = "unreadable: " + res.OldUnreadable
	case res.OldVersions >= 0:
		old = fmt.Sprint(res.OldVersions)
	}
	kept := none(res.KeptAside)
	if !done {
		kept = "not replaced (nothing was changed)"
	}
	rows := [][]string{
		{"versions", fmt.Sprint(res.Versions)},
		{"from an older snapshot", fmt.Sprint(res.OlderSnapshots)},
		{"taken from the old metastore", list(res.Recovered)},
		{"block references", fmt.Sprint(res.Blocks)},
		{"block records read (all versions)", fmt.Sprint(res.Records)},
		{"conflicting records", fmt.Sprint(res.Conflicts)},
		{"unreadable versions", list(res.Unreadable)},
		{"versions in the old metastore", old},
		{"old metastore problem", none(res.OldProblem)},
		{"old metastore kept as", kept},
		{"duration", fmt.Sprintf("%.2fs", res.DurationSeconds)},
	}
	if len(res.Lost) > 0 {
		what := "versions lost (--accept-loss)"
		if !done {
			what = "versions that would be lost"
		}
		rows = append(rows[:7], append([][]string{{what, fmt.Sprint(len(res.Lost))}}, rows[7:]...)...)
	}
	if err := ui.Table(e.stdout, []string{"FIELD", "VALUE"}, rows); err != nil {
		return err
	}
	if len(res.Lost) == 0 {
		return nil
	}
	fmt.Fprintln(e.stdout)
	lost := make([][]string, 0, len(res.Lost))
	for _, l := range res.Lost {
		date := ""
		if !l.Date.IsZero() {
			date = l.Date.UTC().Format("2006-01-02 15:04:05")
		}
		lost = append(lost, []string{l.UID, l.Volume, date, l.Status, l.Why})
	}
	return ui.Table(e.stdout, []string{"LOST VERSION", "VOLUME", "DATE (UTC)", "STATUS", "WHY"}, lost)
}

// lsFromBackend lists the versions of volume (all when "") whose metadata
// the data backend holds, reading the start of each one's newest snapshot.
func lsFromBackend(ctx context.Context, e *env, volume string) ([]*metastore.Version, error) {
	be, err := newBackend(ctx, e.cfg, e.log, false)
	if err != nil {
		return nil, err
	}
	defer be.Close()
	dir, err := os.MkdirTemp("", "backy-ls-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	db, err := transfer.Scratch(ctx, dir, be)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	st, err := recoveringStore(ctx, e, db, be)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	workers := max(16, be.Properties().Connections)
	vs, bad, err := catalog.New(st, "", e.log).Versions(ctx, workers)
	if err != nil {
		return nil, err
	}
	if len(bad) > 0 {
		e.log.Warn("the data backend holds unreadable metadata of some versions", "versions", bad)
	}
	out := vs[:0]
	for _, v := range vs {
		if volume == "" || v.Volume == volume {
			out = append(out, v)
		}
	}
	return out, nil
}

// restoreFromBackend builds a throwaway metastore of version uid from the
// data backend and runs fn with it and a reading block store.
func restoreFromBackend(ctx context.Context, e *env, uid string, fn func(*metastore.DB, *blockstore.Store) error) error {
	if !metastore.ValidUID(uid) {
		return fmt.Errorf("%w: %q is not a version uid", metastore.ErrVersionNotFound, uid)
	}
	be, err := newBackend(ctx, e.cfg, e.log, false)
	if err != nil {
		return err
	}
	defer be.Close()
	dir, err := os.MkdirTemp("", "backy-restore-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var st *blockstore.Store
	open := func(ctx context.Context, db *metastore.DB) (*catalog.Catalog, error) {
		s, err := recoveringStore(ctx, e, db, be)
		if err != nil {
			return nil, err
		}
		st = s
		return catalog.New(s, "", e.log), nil
	}
	db, err := transfer.FromBackend(ctx, dir, be, open, uid, e.log)
	if st != nil {
		defer st.Close()
	}
	if err != nil {
		if errors.Is(err, catalog.ErrNoSnapshot) {
			return fmt.Errorf("%w (list the versions the backend holds: they are under versions/ in %s)", err, dataLocation(e.cfg))
		}
		return err
	}
	defer db.Close()
	return fn(db, st)
}
