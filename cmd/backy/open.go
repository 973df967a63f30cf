package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/blockstore"
	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/backend/file"
	"github.com/backy/backy/blockstore/backend/s3"
	"github.com/backy/backy/blockstore/backend/stack"
	"github.com/backy/backy/cmd/backy/internal/config"
	"github.com/backy/backy/internal/block"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/migrate"
	"github.com/backy/backy/versions/catalog"
)

var (
	errStoreMismatch = errors.New("metastore and data backend belong to different stores")
	errNoSuchVolume  = errors.New("no such volume")
)

// env is what commands share: output streams, the environment, and the
// global flags.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	json           bool
	log            *slog.Logger
	logFile        *os.File
	// fileLog logs to log_file only (nil without one): failures, which
	// stderr gets as the one 'backy:' line.
	fileLog        *slog.Logger
	cfg            *config.Config
	isDefault      bool
	unknownCommand string
	metrics        metrics
	// metaOnly: the command reads or changes only metadata (ls, stats,
	// protect, unprotect, expire), so an unreachable data backend is a
	// warning (store.beDown), not a failure.
	metaOnly bool
}

// metaOnlyRetryFor bounds how long a metadata-only command waits for an
// unreachable data backend before it goes on without it.
const metaOnlyRetryFor = 10 * time.Second

// store is an open store: metastore, backend and, once a command asks for
// it (see blocks), the block store.
type store struct {
	e  *env
	db *metastore.DB
	be backend.Backend
	st *blockstore.Store
	// cat is the catalog of version snapshots (meta.go), extra the block
	// stores opened for it besides st.
	cat   *catalog.Catalog
	extra []*blockstore.Store
	// lastSync is what the last syncMeta wrote and failed to write.
	lastSync catalog.SyncResult
	// beDown is why the data backend could not be reached when a
	// metadata-only command opened the store (be is nil then).
	beDown error
}

func (s *store) Close() {
	for _, st := range s.extra {
		st.Close()
	}
	if s.st != nil {
		s.st.Close()
	}
	if s.be != nil {
		_ = s.be.Close()
	}
	if s.db != nil {
		_ = s.db.Close()
	}
}

// setup reads the configuration and starts logging; every command runs it.
func (e *env) setup(c *cli.Context) error {
	e.json = jsonWanted(c)
	cfg, isDefault, err := config.Resolve(flagString(c, "config"), e.getenv)
	if err != nil {
		return err
	}
	e.cfg, e.isDefault = cfg, isDefault
	level := slog.LevelWarn
	if l := flagString(c, "log-level"); l != "" {
		if err := level.UnmarshalText([]byte(l)); err != nil {
			return usageErr("--log-level %q: use debug, info, warn or error", l)
		}
	}
	// stderr is read by people ("backy: warning: ..."); the log_file keeps
	// structured lines.
	handlers := []slog.Handler{newHumanHandler(e.stderr, level)}
	if cfg.Defaults.LogFile != "" {
		f, err := os.OpenFile(cfg.Defaults.LogFile, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("%w: log_file %s: %w", config.ErrInvalid, cfg.Defaults.LogFile, err)
		}
		e.logFile = f
		var fl slog.Level
		_ = fl.UnmarshalText([]byte(cfg.Defaults.LogLevel))
		fh := slog.NewTextHandler(f, &slog.HandlerOptions{Level: fl})
		handlers = append(handlers, fh)
		e.fileLog = slog.New(fh)
	}
	e.log = slog.New(multiHandler(handlers))
	for _, w := range cfg.Warnings {
		e.log.Warn(w)
	}
	metastore.SetHolderName("backy " + c.Command.Name)
	return nil
}

func (e *env) close() {
	if e.logFile != nil {
		_ = e.logFile.Close()
	}
}

// openStore opens the configured store. The default store (no config) is
// created on first use, with one line on stderr saying where.
func (e *env) openStore(ctx context.Context) (*store, error) {
	s, err := e.openStoreInner(ctx)
	if err != nil && !errors.Is(err, metastore.ErrNoStore) && !errors.Is(err, errStoreMismatch) && !errors.Is(err, blockstore.ErrStoreExists) && !errors.Is(err, config.ErrInvalid) &&
		!errors.Is(err, metastore.ErrNewerSchema) && !errors.Is(err, metastore.ErrLocked) && !errors.Is(err, metastore.ErrBusy) &&
		!errors.Is(err, metastore.ErrDamaged) && !errors.Is(err, metastore.ErrNotBacky) && !errors.Is(err, metastore.ErrCorrupt) {
		where := "the paths in " + configName(e.cfg)
		if e.isDefault {
			where = "BACKY_HOME (or use -c FILE)"
		}
		return nil, fmt.Errorf("cannot open the store (metastore %s, data %s): %w; check %s", e.cfg.Meta.Path, dataLocation(e.cfg), err, where)
	}
	return s, err
}

func (e *env) openStoreInner(ctx context.Context) (*store, error) {
	cfg := e.cfg
	if _, err := os.Stat(cfg.Meta.Path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	} else if err != nil && e.isDefault {
		s, created, err := e.createStoreIfMissing(ctx, cfg.Defaults.BlockSize)
		if err != nil || !created {
			return s, err
		}
		fmt.Fprintf(e.stderr, "backy: created a new store in %s (block size %s); set BACKY_HOME or use -c FILE for another\n",
			filepath.Dir(cfg.Meta.Path), config.FormatSize(cfg.Defaults.BlockSize))
		return s, nil
	}
	return e.openExisting(ctx)
}

// openExisting opens a store that exists.
func (e *env) openExisting(ctx context.Context) (*store, error) {
	cfg := e.cfg
	db, err := migrate.Open(ctx, cfg.Meta.Path, metastore.Options{}, migrate.Options{Notify: func(s string) { fmt.Fprintln(e.stderr, s) }})
	if err != nil {
		if errors.Is(err, metastore.ErrNoStore) {
			return nil, fmt.Errorf("%w: run 'backy init' first, or 'backy rebuild-metastore' if the data backend holds a store whose metastore was lost (config: %s)", err, configName(cfg))
		}
		return nil, err
	}
	s := &store{e: e, db: db}
	if err := e.openData(ctx, s); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func configName(cfg *config.Config) string {
	if cfg.File == "" {
		return "built-in default"
	}
	return cfg.File
}

// openData opens the data backend and checks that it belongs to the
// metastore's store. For a metadata-only command, a backend that cannot be
// reached (backend.ErrUnavailable, after a short retry budget) is left
// out with a warning: s.be stays nil and s.beDown says why.
func (e *env) openData(ctx context.Context, s *store) error {
	cfg := e.cfg
	if e.metaOnly && cfg.Data.Type == "s3" {
		c := *cfg
		if c.Data.S3.RetryFor > metaOnlyRetryFor {
			c.Data.S3.RetryFor = metaOnlyRetryFor
		}
		cfg = &c
	}
	be, err := newBackend(ctx, cfg, e.log, false)
	var id blockstore.Identity
	if err == nil {
		s.be = be
		id, err = blockstore.ReadIdentity(ctx, be)
	}
	if err != nil && e.metaOnly && errors.Is(err, backend.ErrUnavailable) && ctx.Err() == nil {
		if s.be != nil {
			_ = s.be.Close()
			s.be = nil
		}
		s.beDown = err
		e.log.Warn("the data backend could not be reached, so it was not checked; going on with the metastore alone",
			"data", dataLocation(e.cfg), "err", err)
		return nil
	}
	if err != nil {
		if errors.Is(err, blockstore.ErrNoIdentity) {
			return fmt.Errorf("%w: %w; check [DataBackend] path in %s", errStoreMismatch, err, configName(e.cfg))
		}
		return err
	}
	sid := s.db.StoreID()
	if id.StoreID != hex.EncodeToString(sid[:]) {
		return fmt.Errorf("%w: the metastore %s is store %x, the data backend %s holds store %s; check %s",
			errStoreMismatch, s.db.Path(), sid, be.Properties().Location, id.StoreID, configName(e.cfg))
	}
	return nil
}

// newBackend builds the configured data backend: the file backend in the
// stack of wrappers of its simultaneous_* limits, or the S3 backend, which
// builds its stack (retries, limits) from its options itself. Both stacks
// are assembled by package stack, the one place that knows their order.
func newBackend(ctx context.Context, cfg *config.Config, log *slog.Logger, create bool) (backend.Backend, error) {
	switch cfg.Data.Type {
	case "file":
		if !create {
			if _, err := os.Stat(cfg.Data.Path); err != nil {
				return nil, fmt.Errorf("%w: data directory %s: %w; check [DataBackend] path in %s", errStoreMismatch, cfg.Data.Path, err, configName(cfg))
			}
		}
		// Directory syncs are batched per commit: the backup engine
		// flushes before it records blocks in the metastore.
		fb, err := file.NewWithOptions(cfg.Data.Path, file.Options{DeferDirSync: true})
		if err != nil {
			return nil, err
		}
		return stack.Wrap(fb, stack.Options{
			SimultaneousReads:  cfg.Data.SimultaneousReads,
			SimultaneousWrites: cfg.Data.SimultaneousWrites,
		}), nil
	case "s3":
		c := cfg.Data.S3
		return s3.New(ctx, s3.Options{
			Clock:              clock.System,
			Bucket:             c.Bucket,
			Prefix:             c.Prefix,
			Region:             c.Region,
			Endpoint:           c.Endpoint,
			PathStyle:          c.PathStyle,
			AccessKeyID:        c.AccessKeyID,
			SecretAccessKey:    c.SecretAccessKey,
			SessionToken:       c.SessionToken,
			Profile:            c.Profile,
			ConnectTimeout:     c.ConnectTimeout,
			RequestTimeout:     c.RequestTimeout,
			RetryFor:           retryFor(c.RetryFor),
			MaxAttempts:        c.MaxAttempts,
			SimultaneousReads:  cfg.Data.SimultaneousReads,
			SimultaneousWrites: cfg.Data.SimultaneousWrites,
			StorageClass:       c.StorageClass,
			BandwidthRead:      c.BandwidthRead,
			BandwidthWrite:     c.BandwidthWrite,
			Logger:             log,
		})
	}
	return nil, fmt.Errorf("%w: [DataBackend] type %q is not supported (supported: file, s3)", config.ErrInvalid, cfg.Data.Type)
}

// retryFor maps the configured retry_for (0: no retries) to the S3
// backend's option (0: the default, negative: no retries).
func retryFor(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// ioWorkers is the worker count of engines whose workers each wait on
// one backend request at a time: the configured workers, or enough to
// keep every connection of the backend busy (a remote backend has more
// than the CPUs could use for hashing).
func (s *store) ioWorkers() int {
	if w := s.e.cfg.Defaults.Workers; w > 0 {
		return w
	}
	return max(runtime.GOMAXPROCS(0)+4, s.be.Properties().Connections)
}

// dataLocation describes the configured data backend for messages.
func dataLocation(cfg *config.Config) string {
	if cfg.Data.Type == "s3" {
		loc := "s3://" + cfg.Data.S3.Bucket + "/" + cfg.Data.S3.Prefix
		if cfg.Data.S3.Endpoint != "" {
			loc += " at " + cfg.Data.S3.Endpoint
		}
		return loc
	}
	return cfg.Data.Path
}

// createStoreIfMissing creates the store unless another process created it
// meanwhile, in which case it opens it. created says which.
func (e *env) createStoreIfMissing(ctx context.Context, blockSize int64) (*store, bool, error) {
	lk, err := metastore.LockCreate(e.cfg.Meta.Path)
	if err != nil {
		return nil, false, err
	}
	defer lk.Unlock()
	if _, err := os.Stat(e.cfg.Meta.Path); err == nil {
		s, err := e.openExisting(ctx)
		return s, false, err
	}
	s, err := e.createStoreLocked(ctx, blockSize)
	return s, err == nil, err
}

// createStore creates metastore and data backend of a new store.
func (e *env) createStore(ctx context.Context, blockSize int64) (*store, error) {
	lk, err := metastore.LockCreate(e.cfg.Meta.Path)
	if err != nil {
		return nil, err
	}
	defer lk.Unlock()
	return e.createStoreLocked(ctx, blockSize)
}

// createStoreLocked creates a store; the caller holds the creation lock.
//
// The order makes an interrupted creation recognisable: first the new
// metastore, complete, under a temporary name (it records the new store's
// id), then the backend's identity (store.json), then the metastore's
// link into place. A store.json without a metastore whose id a temporary
// metastore records, in a backend holding nothing else, is what a killed
// creation left (recoverCreation rolls it back); any other store.json is
// a store's and is never deleted.
func (e *env) createStoreLocked(ctx context.Context, blockSize int64) (*store, error) {
	cfg := e.cfg
	if _, err := os.Stat(cfg.Meta.Path); err == nil {
		e.removeCreations(nil)
		return nil, fmt.Errorf("%w: %s", metastore.ErrExists, cfg.Meta.Path)
	}
	be, err := newBackend(ctx, cfg, e.log, true)
	if err != nil {
		return nil, err
	}
	if err := e.recoverCreation(ctx, be); err != nil {
		_ = be.Close()
		return nil, err
	}
	var sid [16]byte
	if _, err := randRead(sid[:]); err != nil {
		_ = be.Close()
		return nil, err
	}
	pend, err := metastore.Prepare(cfg.Meta.Path, blockSize, sid, metastore.Options{})
	if err != nil {
		_ = be.Close()
		return nil, err
	}
	// The backend's identity before the metastore is in place: a
	// metastore never exists without it.
	if err := blockstore.WriteIdentity(ctx, be, blockstore.NewIdentity(sid, blockSize, time.Now())); err != nil {
		pend.Abort()
		_ = be.Close()
		return nil, err
	}
	db, err := pend.Commit()
	if err != nil {
		_ = be.Close()
		return nil, err
	}
	s := &store{e: e, db: db, be: be}
	e.log.Info("store created", "metastore", cfg.Meta.Path, "data", be.Properties().Location, "block_size", blockSize)
	return s, nil
}

// recoverCreation undoes what a creation of this store that was killed
// left: temporary metastores, and the store.json it wrote if the backend
// holds nothing else. The caller holds the creation lock (so no creation
// runs) and has found no metastore.
func (e *env) recoverCreation(ctx context.Context, be backend.Backend) error {
	cs, err := metastore.Creations(e.cfg.Meta.Path)
	if err != nil || len(cs) == 0 {
		return err
	}
	id, err := blockstore.ReadIdentity(ctx, be)
	switch {
	case errors.Is(err, blockstore.ErrNoIdentity):
		// Killed before it wrote store.json.
		e.removeCreations(cs)
		return nil
	case err != nil:
		return err
	}
	var match []metastore.Creation
	for _, c := range cs {
		if c.Err == nil && c.Versions == 0 && hex.EncodeToString(c.StoreID[:]) == id.StoreID {
			match = append(match, c)
		}
	}
	if len(match) == 0 {
		// store.json is another store's (WriteIdentity refuses it).
		e.removeCreations(cs)
		return nil
	}
	// Nothing but store.json: no metastore ever used the store.
	errUsed := errors.New("used")
	err = be.List(ctx, "", func(i backend.Info) error {
		if i.Name != blockstore.IdentityName {
			return errUsed
		}
		return nil
	})
	switch {
	case errors.Is(err, errUsed):
		// Not debris: the temporary metastore may be a second name of
		// the store's lost metastore. Left as it is; WriteIdentity says
		// the backend holds a store (rebuild-metastore recovers it).
		return nil
	case err != nil:
		return err
	}
	if err := be.Delete(ctx, blockstore.IdentityName); err != nil && !errors.Is(err, backend.ErrNotFound) {
		return fmt.Errorf("rolling back an interrupted creation of store %s: %w", id.StoreID, err)
	}
	if err := backend.Sync(ctx, be); err != nil {
		return fmt.Errorf("rolling back an interrupted creation of store %s: %w", id.StoreID, err)
	}
	fmt.Fprintf(e.stderr, "backy: rolled back an interrupted creation of store %s (its %s in %s, never used, is deleted); creating the store again\n",
		id.StoreID, blockstore.IdentityName, be.Properties().Location)
	e.log.Info("rolled back an interrupted store creation", "store", id.StoreID, "data", be.Properties().Location)
	e.removeCreations(cs)
	return nil
}

// removeCreations removes what killed creations of the metastore left
// under temporary names (all of them when cs is nil), except files that
// hold versions (a second name of a metastore that was used: kept, with a
// warning). The caller holds the creation lock. It returns the files
// removed.
func (e *env) removeCreations(cs []metastore.Creation) []string {
	if cs == nil {
		var err error
		if cs, err = metastore.Creations(e.cfg.Meta.Path); err != nil || len(cs) == 0 {
			return nil
		}
	}
	var debris []metastore.Creation
	var removed []string
	for _, c := range cs {
		if !c.Debris() {
			e.log.Warn("a temporary metastore of an interrupted creation holds versions: kept (it may be the only copy of a metastore that was lost)",
				"file", c.Path, "versions", c.Versions)
			continue
		}
		debris = append(debris, c)
		removed = append(removed, c.Path)
	}
	if err := metastore.RemoveCreations(debris); err != nil {
		e.log.Warn("could not remove what an interrupted store creation left", "err", err)
		return nil
	}
	for _, p := range removed {
		e.log.Info("removed what an interrupted store creation left", "file", p)
	}
	return removed
}

// multiHandler sends records to several handlers.
type multiHandler []slog.Handler

func (m multiHandler) Enabled(ctx context.Context, l slog.Level) bool {
	for _, h := range m {
		if h.Enabled(ctx, l) {
			return true
		}
	}
	return false
}

func (m multiHandler) Handle(ctx context.Context, r slog.Record) error {
	var first error
	for _, h := range m {
		if h.Enabled(ctx, r.Level) {
			if err := h.Handle(ctx, r.Clone()); err != nil && first == nil {
				first = err
			}
		}
	}
	return first
}

func (m multiHandler) WithAttrs(a []slog.Attr) slog.Handler {
	out := make(multiHandler, len(m))
	for i, h := range m {
		out[i] = h.WithAttrs(a)
	}
	return out
}

func (m multiHandler) WithGroup(name string) slog.Handler {
	out := make(multiHandler, len(m))
	for i, h := range m {
		out[i] = h.WithGroup(name)
	}
	return out
}

// withStore is the action of a command that checks its argument count,
// opens the store, runs fn and closes the store.
func (e *env) withStore(min, max int, usage string, fn func(*cli.Context, *store) error) cli.ActionFunc {
	return func(c *cli.Context) error {
		if err := args(c, min, max, usage); err != nil {
			return err
		}
		s, err := e.openStore(c.Context)
		if err != nil {
			return err
		}
		defer s.Close()
		return fn(c, s)
	}
}

// withMetaStore is withStore for a command that reads or changes only
// metadata: it works while the data backend is unreachable (see
// openData; syncMeta then leaves the changes pending, saying so).
func (e *env) withMetaStore(min, max int, usage string, fn func(*cli.Context, *store) error) cli.ActionFunc {
	inner := e.withStore(min, max, usage, fn)
	return func(c *cli.Context) error {
		e.metaOnly = true
		return inner(c)
	}
}

// jsonWanted reports whether --json was given globally or to the command
// (each has its own flag, so the command's unset flag must not hide the
// global one).
func jsonWanted(c *cli.Context) bool {
	for _, l := range c.Lineage() {
		if l.IsSet("json") && l.Bool("json") {
			return true
		}
	}
	return false
}

// storeOptions turns the configuration into block store options.
func storeOptions(cfg *config.Config) blockstore.Options {
	o := blockstore.Options{CompressionLevel: cfg.Defaults.CompressionLevel}
	if cfg.Defaults.Compression == "zstd" {
		o.Compression = block.CompressionZstd
	}
	return o
}
