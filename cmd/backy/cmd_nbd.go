package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/cmd/backy/internal/config"
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
			"A served version cannot be removed meanwhile. Ctrl-C stops the server; open sessions are\n" +
			"committed or discarded as configured.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Usage: "listen on `ADDR` (host:port; default [NBD] listen, 127.0.0.1:10809)"},
			&cli.BoolFlag{Name: "read-only", Usage: "refuse writes"},
			&cli.BoolFlag{Name: "discard-changes", Usage: "drop a session's writes when the client disconnects instead of making a new version"},
			&cli.Int64Flag{Name: "cache-mib", Value: 256, Usage: "block cache per session, in MiB", Action: func(_ *cli.Context, n int64) error {
				if n < 1 || n > config.MaxCacheMiB {
					return usageErr("--cache-mib %d is out of range: %s", n, config.RangeError("--cache-mib", "1", fmt.Sprint(config.MaxCacheMiB), "MiB, up to "+config.FormatSize(config.MaxCacheMiB<<20)))
				}
				return nil
			}},
		},
		Action: e.withStore(0, 0, "no arguments", func(c *cli.Context, s *store) error {
			ctx := c.Context
			ro := c.Bool("read-only")
			var err error
			if ro {
				_, err = s.blocksAt(ctx, 0)
			} else {
				_, err = s.blocks(ctx)
			}
			if err != nil {
				return err
			}
			addr := e.cfg.NBD.Listen
			if c.IsSet("listen") {
				addr = c.String("listen")
			}
			tlsConf, err := e.cfg.NBD.TLSConfig()
			if err != nil {
				return err
			}
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				return fmt.Errorf("listening on %s: %w", addr, err)
			}
			ex := &nbdExports{e: e, s: s, ro: ro, discard: c.Bool("discard-changes"), cache: c.Int64("cache-mib") << 20}
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
			srv := nbd.NewServer(ex, nbd.Options{Logger: e.log, TLS: tlsConf, RequireTLS: e.cfg.NBD.TLS == config.TLSRequired})
			err = srv.Serve(ctx, ln)
			ex.wait()
			ex.syncMu.Lock()
			defer ex.syncMu.Unlock()
			if serr := s.syncMeta(context.WithoutCancel(ctx)); serr != nil && err == nil {
				err = serr
			}
			if len(ex.failed) > 0 && err == nil {
				err = fmt.Errorf("%d copy-on-write session(s) lost their changes: %w", len(ex.failed), multiError(ex.failed))
			}
			if errors.Is(err, context.Canceled) || ctx.Err() != nil && err == nil {
				return nil
			}
			return err
		}),
	}
}

func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// nbdExports offers the store's versions to the NBD server.
type nbdExports struct {
	e       *env
	s       *store
	ro      bool
	discard bool
	cache   int64
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
	d, err := device.Open(ctx, x.s.db, x.s.st, v.UID, device.Options{ReadOnly: x.ro, CacheBytes: x.cache, Logger: x.e.log})
	if err != nil {
		if errors.Is(err, metastore.ErrVersionNotFound) || errors.Is(err, device.ErrNotServable) {
			err = fmt.Errorf("%w: %w", nbd.ErrUnknownExport, err)
		}
		return nil, nbd.ExportInfo{}, err
	}
	x.e.log.Info("nbd session opened", "export", name, "version", v.UID)
	return &nbdExport{x: x, d: d, name: name}, x.info(name, v), nil
}

// nbdExport is one session on a device.
type nbdExport struct {
	x    *nbdExports
	d    *device.Device
	name string
	once sync.Once
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
// version as its base, so only the changed blocks are read and stored.
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
			err = n.d.Close()
			return
		}
		x.commits.Add(1)
		defer x.commits.Done()
		err = n.commit(log)
		if cerr := n.d.Close(); err == nil {
			err = cerr
		}
	})
	return err
}

func (n *nbdExport) commit(log *slog.Logger) error {
	x := n.x
	v := n.d.Version()
	// The commit finishes even when the server is being stopped.
	ctx := context.Background()
	labels := maps.Clone(v.Labels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels["nbd-origin"] = v.UID
	nv, err := backup.Run(ctx, x.s.st, x.s.db, n.d.Source(ctx), backup.Options{
		Volume: v.Volume, Snapshot: v.Snapshot, Labels: labels, Base: v, Hints: n.d.Changes(),
		Workers: x.s.ioWorkers(), Logger: x.e.log,
	})
	if err != nil {
		log.Error("the nbd session's changes could not be made a new version", "err", err)
		fmt.Fprintf(x.e.stderr, "backy: session on %s: its changes could not be saved: %v\n", n.name, err)
		x.syncMu.Lock()
		x.failed = append(x.failed, fmt.Errorf("session on %s: its changes could not be saved: %w", n.name, err))
		x.syncMu.Unlock()
		return err
	}
	log.Info("nbd session's changes saved as a new version", "new_version", nv.UID, "bytes_written", nv.BytesWritten)
	fmt.Fprintf(x.e.stdout, "%s\n", nv.UID)
	x.syncMu.Lock()
	defer x.syncMu.Unlock()
	if err := x.s.syncMeta(ctx); err != nil {
		log.Warn("writing the new version's metadata to the data backend failed (the next command retries)", "err", err)
	}
	return nil
}
