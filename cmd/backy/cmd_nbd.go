package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/cmd/backy/internal/config"
	"github.com/backy/backy/internal/clock"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/backup"
	"github.com/backy/backy/versions/device"
	"github.com/backy/backy/versions/nbd"
)

func cmdNBD(e *env) *cli.Command {
	return &cli.Command{
		Name:  "nbd",
		Usage: "serve versions as block devices over the NBD protocol (read-only, or copy-on-write)",
		Description: "Serves every complete version under its uid, and the newest valid version of each volume as\n" +
			"VOLUME@latest, to NBD clients (nbdcopy, nbdinfo, nbdfuse, qemu, nbd-client). Reads are verified\n" +
			"block by block: a damaged block is an I/O error to the client, never wrong data, and is marked\n" +
			"invalid. Without --read-only, a client's writes go to a private overlay and, when it disconnects,\n" +
			"become a new version of the same volume (labelled nbd-origin=UID), unless --discard-changes.\n" +
			"What a client flushed survives a crash: the next backy nbd saves it as a new version first.\n" +
			"A served version cannot be removed meanwhile. Ctrl-C stops the server; open sessions are\n" +
			"committed or discarded as configured.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Usage: "listen on `ADDR` (host:port; default [NBD] listen, 127.0.0.1:10809)"},
			&cli.BoolFlag{Name: "read-only", Usage: "refuse writes"},
			&cli.BoolFlag{Name: "discard-changes", Usage: "drop a session's writes when the client disconnects instead of making a new version"},
			&cli.StringFlag{Name: "cache-size", Value: "256MiB", Usage: "block cache per session (`SIZE`, e.g. 256MiB or 1GiB; 1MiB to 64GiB)"},
			&cli.Int64Flag{Name: "cache-mib", Hidden: true, Usage: "block cache per session in MiB (old spelling of --cache-size)"},
		},
		Action: e.withStore(0, 0, "no arguments", func(c *cli.Context, s *store) error {
			ctx := c.Context
			ro := c.Bool("read-only")
			cache, err := nbdCacheSize(c)
			if err != nil {
				return err
			}
			if ro {
				_, err = s.blocksAt(ctx, 0)
			} else {
				_, err = s.blocks(ctx)
			}
			if err != nil {
				return err
			}
			addr, flag := e.cfg.NBD.Listen, c.IsSet("listen")
			if flag {
				a, msg := config.ParseListen(c.String("listen"))
				if msg != "" {
					return usageErr("--listen: %s", msg)
				}
				addr = a
			}
			tlsConf, err := e.cfg.NBD.TLSConfig()
			if err != nil {
				return err
			}
			// Earlier sessions' flushed writes are saved before anything
			// is served (or listened for): a client that connects finds
			// them in a version.
			ex := &nbdExports{e: e, s: s, ro: ro, discard: c.Bool("discard-changes"), cache: cache,
				dir: nbdOverlayDir(s.db)}
			if ro {
				ex.reportOrphans()
			} else {
				ex.recoverOrphans(ctx)
			}
			if err := ctx.Err(); err != nil {
				// Interrupted while saving them: the next backy nbd goes on.
				return err
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return e.listenErr(addr, flag, err)
			}
			where := "loopback only"
			if !isLoopback(ln.Addr()) {
				where = "reachable from other hosts: anyone who can connect can read the versions"
				e.log.Warn("the NBD server listens beyond this host", "addr", ln.Addr().String())
			}
			mode := "copy-on-write (changes become new versions)"
			switch {
			case ro:
				mode = "read-only"
			case ex.discard:
				mode = "copy-on-write, changes discarded"
			}
			scheme, tlsMode := "nbd", ""
			if tlsConf != nil {
				scheme, tlsMode = "nbds", ", TLS "+e.cfg.NBD.TLS
			}
			fmt.Fprintf(e.stderr, "backy: serving versions on %s://%s/ (%s, %s%s); Ctrl-C stops\n", scheme, ln.Addr(), where, mode, tlsMode)
			srv := nbd.NewServer(ex, nbd.Options{Logger: e.log, Clock: clock.System, TLS: tlsConf, RequireTLS: e.cfg.NBD.TLS == config.TLSRequired,
				MaxConns: e.cfg.NBD.MaxConnections, MaxConnsPerClient: e.cfg.NBD.MaxConnectionsPerClient, HandshakeTimeout: e.cfg.NBD.HandshakeTimeout})
			err = srv.Serve(ctx, ln)
			ex.wait()
			ex.syncMu.Lock()
			defer ex.syncMu.Unlock()
			if serr := s.syncMeta(context.WithoutCancel(ctx)); serr != nil && err == nil {
				err = serr
			}
			if len(ex.failed) > 0 && err == nil {
				// Ctrl-C is how the server stops: the failures keep their
				// own exit code rather than 130.
				err = ownExitCode{fmt.Errorf("%d copy-on-write session(s) could not be saved as new versions: %w", len(ex.failed), multiError(ex.failed))}
			}
			if errors.Is(err, context.Canceled) || ctx.Err() != nil && err == nil {
				return nil
			}
			return err
		}),
	}
}

// ownExitCode is an error reported with its own exit code even after
// Ctrl-C (main reports others as interrupted).
type ownExitCode struct{ error }

func (o ownExitCode) Unwrap() []error { return []error{o.error, errExitCode} }

// errListenBusy: the NBD listen address is in use (exit 73).
var errListenBusy = errors.New("the address is in use by another program")

// listenErr explains why the server cannot listen on addr (from --listen
// if flag, else from [NBD] listen or its default): in use (exit 73),
// permission denied (77), or an address that cannot be listened on here,
// such as one not of this host or a host name that does not resolve: a bad
// command line (64) or configuration (78).
func (e *env) listenErr(addr string, flag bool, err error) error {
	cause := err
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		cause = oe.Err
		var se *os.SyscallError
		if errors.As(cause, &se) {
			cause = se.Err
		}
	}
	switch {
	case errors.Is(err, syscall.EADDRINUSE):
		return fmt.Errorf("cannot listen on %s: %w (another 'backy nbd' or NBD server?): stop it, or choose another port with --listen or [NBD] listen", addr, errListenBusy)
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("cannot listen on %s: %w (a port below 1024 needs root or CAP_NET_BIND_SERVICE): choose another port with --listen or [NBD] listen", addr, cause)
	case flag:
		return usageErr("--listen %s: cannot listen there: %v (use an address of this host, e.g. 127.0.0.1:10809, or :10809 for every address)", addr, cause)
	}
	return fmt.Errorf("%w: %s: [NBD] listen = %s: cannot listen there: %v (use an address of this host, e.g. 127.0.0.1:10809, or :10809 for every address)", config.ErrInvalid, configName(e.cfg), addr, cause)
}

func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// nbdOverlayDir is where copy-on-write sessions keep their overlays:
// beside the metastore, "<metastore>.nbd" (see device.Orphans).
func nbdOverlayDir(db *metastore.DB) string { return db.Path() + ".nbd" }

// nbdWaiting fails (wrapping metastore.ErrLocked: in use, exit 75) when
// writes that an nbd copy-on-write session flushed wait in the overlay
// directory with version uid as their base: a session that crashed, or
// whose changes could not be saved yet. Removing the base would lose them
// (the overlay holds only the changed blocks); the next 'backy nbd' saves
// them as a new version. A running session share-locks its version anyway.
func (s *store) nbdWaiting(uid string) error {
	dir := nbdOverlayDir(s.db)
	infos, err := device.Overlays(dir)
	if err != nil {
		return fmt.Errorf("looking for nbd sessions' flushed writes in %s: %w", dir, err)
	}
	for _, in := range infos {
		if in.Version == uid {
			return fmt.Errorf("%w: version %s is the base of flushed writes of the nbd session %s (%s, last flushed %s) that are not saved yet: run 'backy nbd' to save them as a new version first (or delete %s to give them up)",
				metastore.ErrLocked, uid, in.Session, dir, in.Saved.UTC().Format(time.RFC3339), filepath.Join(dir, uid+"-"+in.Session+".*"))
		}
	}
	return nil
}

// Labels of the versions copy-on-write sessions make.
const (
	labelNBDOrigin    = "nbd-origin"    // the served version
	labelNBDSession   = "nbd-session"   // the session (its overlay)
	labelNBDRecovered = "nbd-recovered" // "true": saved by a later backy nbd
)

// nbdExports offers the store's versions to the NBD server.
type nbdExports struct {
	e       *env
	s       *store
	ro      bool
	discard bool
	cache   int64
	dir     string // of the overlays
	commits sync.WaitGroup
	// syncMu serialises the metadata writes of concurrent commits and
	// guards failed, the sessions whose changes could not be saved (the
	// command exits non-zero for them).
	syncMu sync.Mutex
	failed []error
}

func (x *nbdExports) wait() { x.commits.Wait() }

// resolve turns an export name (a uid, or VOLUME@latest) into a version.
func (x *nbdExports) resolve(name string) (*metastore.Version, error) {
	if vol, ok := strings.CutSuffix(name, "@latest"); ok {
		vs, err := x.s.db.Versions(func(v *metastore.Version) bool {
			return v.Volume == vol && v.Status == metastore.StatusValid && !v.Removing
		})
		if err != nil {
			return nil, err
		}
		if len(vs) == 0 {
			return nil, fmt.Errorf("%w: no valid version of volume %q", nbd.ErrUnknownExport, vol)
		}
		return vs[len(vs)-1], nil
	}
	if !metastore.ValidUID(name) {
		return nil, fmt.Errorf("%w: %q is neither a version uid nor VOLUME@latest", nbd.ErrUnknownExport, name)
	}
	v, err := x.s.db.Version(name)
	if errors.Is(err, metastore.ErrVersionNotFound) {
		return nil, fmt.Errorf("%w: %s", nbd.ErrUnknownExport, name)
	}
	if err == nil && (v.Status == metastore.StatusIncomplete || v.Removing) {
		return nil, fmt.Errorf("%w: %s is incomplete", nbd.ErrUnknownExport, name)
	}
	return v, err
}

func (x *nbdExports) info(name string, v *metastore.Version) nbd.ExportInfo {
	desc := fmt.Sprintf("%s %s %s", v.Volume, v.Date.UTC().Format(time.DateTime), v.Status)
	if v.Snapshot != "" {
		desc += " snapshot " + v.Snapshot
	}
	return nbd.ExportInfo{Name: name, Description: desc, Size: v.Size, ReadOnly: x.ro, BlockSize: v.BlockSize}
}

func (x *nbdExports) List(ctx context.Context) ([]nbd.ExportInfo, error) {
	vs, err := x.s.db.Versions(func(v *metastore.Version) bool { return v.Status != metastore.StatusIncomplete && !v.Removing })
	if err != nil {
		return nil, err
	}
	out := make([]nbd.ExportInfo, 0, len(vs))
	latest := map[string]*metastore.Version{}
	for _, v := range vs {
		out = append(out, x.info(v.UID, v))
		if v.Status == metastore.StatusValid {
			latest[v.Volume] = v
		}
	}
	for _, vol := range slices.Sorted(maps.Keys(latest)) {
		out = append(out, x.info(vol+"@latest", latest[vol]))
	}
	return out, nil
}

func (x *nbdExports) Info(ctx context.Context, name string) (nbd.ExportInfo, error) {
	v, err := x.resolve(name)
	if err != nil {
		return nbd.ExportInfo{}, err
	}
	return x.info(name, v), nil
}

func (x *nbdExports) Open(ctx context.Context, name string) (nbd.Export, nbd.ExportInfo, error) {
	v, err := x.resolve(name)
	if err != nil {
		return nil, nbd.ExportInfo{}, err
	}
	// Copy-on-write sessions whose changes become versions keep them in a
	// durable overlay, so that what a client flushed survives a crash;
	// discarded changes need none.
	d, err := device.Open(ctx, x.s.db, x.s.st, v.UID, device.Options{ReadOnly: x.ro, CacheBytes: x.cache, Logger: x.e.log, Clock: clock.System,
		OverlayDir: x.dir, Durable: !x.ro && !x.discard})
	if err != nil {
		if errors.Is(err, metastore.ErrVersionNotFound) || errors.Is(err, device.ErrNotServable) {
			err = fmt.Errorf("%w: %w", nbd.ErrUnknownExport, err)
		}
		return nil, nbd.ExportInfo{}, err
	}
	x.e.log.Info("nbd session opened", "export", name, "version", v.UID)
	return &nbdExport{x: x, d: d, name: name}, x.info(name, v), nil
}

// nbdExport is one session on a device (or an orphaned overlay being
// recovered).
type nbdExport struct {
	x         *nbdExports
	d         *device.Device
	name      string
	recovered bool
	once      sync.Once
}

func (n *nbdExport) Size() int64 { return n.d.Size() }

func (n *nbdExport) ReadAt(ctx context.Context, p []byte, off int64) error {
	return nbdErr(n.d.ReadAt(ctx, p, off))
}

func (n *nbdExport) WriteAt(ctx context.Context, p []byte, off int64) error {
	return nbdErr(n.d.WriteAt(ctx, p, off))
}

func (n *nbdExport) Zero(ctx context.Context, off, length int64, punch bool) error {
	return nbdErr(n.d.Zero(ctx, off, length))
}

func (n *nbdExport) Trim(ctx context.Context, off, length int64) error {
	return nbdErr(n.d.Trim(ctx, off, length))
}

func (n *nbdExport) Flush(ctx context.Context) error { return nbdErr(n.d.Flush(ctx)) }

func (n *nbdExport) Extents(ctx context.Context, off, length int64) ([]nbd.Extent, error) {
	ext, err := n.d.Extents(ctx, off, length)
	if err != nil {
		return nil, nbdErr(err)
	}
	out := make([]nbd.Extent, len(ext))
	for i, x := range ext {
		out[i] = nbd.Extent{Length: x.Length, Hole: x.Hole, Zero: x.Hole}
	}
	return out, nil
}

func nbdErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, device.ErrReadOnly):
		return fmt.Errorf("%w: %w", nbd.ErrReadOnly, err)
	case errors.Is(err, device.ErrRange):
		return fmt.Errorf("%w: %w", nbd.ErrOutOfRange, err)
	}
	return err
}

// Close ends the session: in copy-on-write mode the changes become a new
// version (unless discarded), made by the backup engine with the served
// version as its base, so only the changed blocks are read and stored. If
// that fails, the durable overlay is kept for the next backy nbd.
func (n *nbdExport) Close(reason error) error {
	var err error
	n.once.Do(func() {
		x := n.x
		log := x.e.log.With("export", n.name, "version", n.d.Version().UID)
		if reason != nil {
			log.Info("nbd client disconnected", "reason", reason)
		}
		if n.d.ReadOnly() || !n.d.Changed() {
			err = n.d.Close()
			return
		}
		if x.discard {
			log.Info("nbd session's changes discarded", "blocks", len(n.d.Changes()))
			n.d.Drop()
			err = n.d.Close()
			return
		}
		x.commits.Add(1)
		defer x.commits.Done()
		// Everything the client wrote is durable before the commit reads
		// it, so that a crash meanwhile leaves the overlay the commit saw.
		if ferr := n.d.Flush(context.Background()); ferr != nil {
			log.Warn("syncing the session's overlay before saving it failed", "err", ferr)
		}
		_, err = n.commit(log, "")
		if err == nil {
			n.d.Drop()
		}
		cerr := n.d.Close()
		if err != nil {
			where := "they are lost"
			if p := n.d.OverlayPath(); p != "" && cerr == nil {
				where = "they are kept in " + p + ", and the next 'backy nbd' (without --read-only) saves them"
			}
			n.x.fail(log, fmt.Errorf("session on %s: its changes could not be saved as a new version: %w; %s", n.name, err, where))
		} else {
			err = cerr
		}
	})
	return err
}

// fail reports a session whose changes could not be saved: on stderr, in
// the log, and in the exit status.
func (x *nbdExports) fail(log *slog.Logger, err error) {
	log.Error("nbd session's changes not saved", "err", err)
	x.syncMu.Lock()
	defer x.syncMu.Unlock()
	fmt.Fprintf(x.e.stderr, "backy: %v\n", err)
	x.failed = append(x.failed, err)
}

// commit saves the device's changes as a new version (or finishes the
// incomplete version resume, a commit a crash interrupted) and prints its
// uid.
func (n *nbdExport) commit(log *slog.Logger, resume string) (*metastore.Version, error) {
	x := n.x
	v := n.d.Version()
	// The commit finishes even when the server is being stopped.
	ctx := context.Background()
	labels := maps.Clone(v.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[labelNBDOrigin] = v.UID
	delete(labels, labelNBDSession)
	delete(labels, labelNBDRecovered)
	if sid := n.d.Session(); sid != "" {
		labels[labelNBDSession] = sid
	}
	if n.recovered {
		labels[labelNBDRecovered] = "true"
	}
	nv, err := backup.Run(ctx, x.s.st, x.s.db, n.d.Source(ctx), backup.Options{
		Volume: v.Volume, Snapshot: v.Snapshot, Labels: labels, Base: v, Hints: n.d.Changes(), Resume: resume,
		Workers: x.s.ioWorkers(), Logger: x.e.log, Clock: clock.System,
	})
	if err != nil {
		return nil, err
	}
	log.Info("nbd session's changes saved as a new version", "new_version", nv.UID, "bytes_written", nv.BytesWritten)
	fmt.Fprintf(x.e.stdout, "%s\n", nv.UID)
	x.syncMu.Lock()
	defer x.syncMu.Unlock()
	if err := x.s.syncMeta(ctx, nv.UID); err != nil {
		log.Warn("writing the new version's metadata to the data backend failed (the next command retries)", "err", err)
	}
	return nv, nil
}

// reportOrphans says (read-only servers do not save them) whether
// sessions of an earlier backy nbd left flushed writes behind.
func (x *nbdExports) reportOrphans() {
	orphans, err := device.Orphans(x.dir)
	if err != nil {
		x.e.log.Warn("looking for the overlays of earlier nbd sessions", "dir", x.dir, "err", err)
	}
	for _, o := range orphans {
		o.Close()
	}
	if len(orphans) > 0 {
		fmt.Fprintf(x.e.stderr, "backy: %d copy-on-write session(s) of an earlier 'backy nbd' left flushed writes in %s; run 'backy nbd' without --read-only to save them as new versions\n",
			len(orphans), x.dir)
	}
}

// recoverOrphans saves the flushed writes of copy-on-write sessions that
// an earlier backy nbd could not save (it was killed, or the commit
// failed) as new versions, as their disconnect would have.
func (x *nbdExports) recoverOrphans(ctx context.Context) {
	orphans, err := device.Orphans(x.dir)
	if err != nil {
		x.fail(x.e.log, fmt.Errorf("looking for the overlays of earlier nbd sessions in %s: %w", x.dir, err))
	}
	for i, o := range orphans {
		if ctx.Err() != nil {
			for _, o := range orphans[i:] {
				o.Close()
			}
			return
		}
		x.recoverOrphan(ctx, o)
	}
}

func (x *nbdExports) recoverOrphan(ctx context.Context, o *device.Orphan) {
	in := o.Info
	log := x.e.log.With("overlay", o.Path, "version", in.Version, "session", in.Session)
	what := fmt.Sprintf("the nbd session %s on version %s (volume %q, %d changed blocks, last flushed %s)",
		in.Session, in.Version, in.Volume, in.Changed, in.Saved.UTC().Format(time.RFC3339))
	keep := func(why error) {
		o.Close()
		x.fail(log, fmt.Errorf("%s: its flushed writes cannot be saved: %w; they are kept in %s (remove it, and the .overlay file beside it, to give them up)",
			what, why, o.Path))
	}
	if o.Err != nil {
		keep(o.Err)
		return
	}
	// A crash after the commit and before the overlay was removed leaves
	// the version made; one during the commit leaves it incomplete.
	prev, err := x.s.db.Versions(func(v *metastore.Version) bool { return v.Labels[labelNBDSession] == in.Session && !v.Removing })
	if err != nil {
		keep(err)
		return
	}
	resume := ""
	if len(prev) > 0 {
		p := prev[len(prev)-1]
		if p.Status != metastore.StatusIncomplete {
			log.Info("the session's writes were saved already", "new_version", p.UID)
			if err := o.Remove(); err != nil {
				log.Warn("removing the saved overlay", "err", err)
			}
			return
		}
		resume = p.UID
	}
	d, err := device.OpenOrphan(ctx, x.s.db, x.s.st, o, device.Options{CacheBytes: x.cache, Logger: x.e.log, Clock: clock.System})
	if err != nil {
		if errors.Is(err, metastore.ErrVersionNotFound) {
			err = fmt.Errorf("version %s no longer exists, and the overlay holds only the blocks the session changed: %w", in.Version, err)
		}
		keep(err)
		return
	}
	n := &nbdExport{x: x, d: d, name: in.Version, recovered: true}
	nv, err := n.commit(log, resume)
	if err != nil {
		if cerr := d.Close(); cerr != nil {
			log.Warn("closing the overlay", "err", cerr)
		}
		x.fail(log, fmt.Errorf("%s: its flushed writes could not be saved as a new version: %w; they are kept in %s, and the next 'backy nbd' tries again", what, err, o.Path))
		return
	}
	d.Drop()
	if err := d.Close(); err != nil {
		log.Warn("removing the saved overlay", "err", err)
	}
	fmt.Fprintf(x.e.stderr, "backy: saved the flushed writes of %s, which an earlier 'backy nbd' had not saved (killed, or its commit failed), as version %s\n", what, nv.UID)
}

// nbdCacheSize is --cache-size (or the old --cache-mib) in bytes.
func nbdCacheSize(c *cli.Context) (int64, error) {
	const lo, hi = 1 << 20, 64 << 30
	if c.IsSet("cache-mib") && !c.IsSet("cache-size") {
		n := c.Int64("cache-mib")
		if n < lo>>20 || n > hi>>20 {
			return 0, usageErr("--cache-mib %d is out of range: %s", n, config.RangeError("--cache-mib", "1", fmt.Sprint(hi>>20), "MiB, up to "+config.FormatSize(hi)))
		}
		return n << 20, nil
	}
	v := c.String("cache-size")
	n, err := config.ParseSize(v)
	if err != nil {
		return 0, usageErr("--cache-size %v", err)
	}
	if n < lo || n > hi {
		return 0, usageErr("--cache-size %s is out of range: %s", v, config.RangeError("--cache-size", config.FormatSize(lo), config.FormatSize(hi), ""))
	}
	return n, nil
}
