package transfer

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/keyring"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/manifest"
)

// What the old metastore knows (issue 13): a rebuild never drops silently
// a version the metastore it replaces has. The old file is read through a
// Salvager (it may be damaged; cmd/backy reads it in a child process).
// Every version it has that the backend's snapshots do not give back is
// taken from it when its metadata reads completely there, and listed as
// lost otherwise; a rebuild that would lose versions changes nothing
// unless the loss is accepted.

// surveyOld reads the versions and key registrations of the old
// metastore at path, or returns nil (saying why in res) when it cannot.
func surveyOld(ctx context.Context, path string, blockSize int64, sid [16]byte, o RebuildOptions, res *RebuildResult) (*Survey, error) {
	sv, err := o.Salvager.Survey(ctx, path)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		res.OldUnreadable = err.Error()
		o.Logger.Warn("the old metastore's versions cannot be read, so they cannot be compared with the rebuilt ones", "metastore", path, "err", err)
		return nil, nil
	}
	if sv.StoreID != hex.EncodeToString(sid[:]) || sv.BlockSize != blockSize {
		res.OldUnreadable = fmt.Sprintf("it is a metastore of store %s (block size %d), the data backend holds store %x (block size %d)", sv.StoreID, sv.BlockSize, sid, blockSize)
		o.Logger.Warn("the old metastore belongs to another store; its versions are not compared", "metastore", path, "problem", res.OldUnreadable)
		return nil, nil
	}
	res.OldVersions = len(sv.Versions) + len(sv.Undecodable)
	if sv.KeysError != "" {
		o.Logger.Warn("the old metastore's key registrations cannot be read", "metastore", path, "err", sv.KeysError)
	}
	return sv, nil
}

// registerOldKeys registers the old metastore's key registrations that
// the backend's keys/ did not give (a lost keys/<N>.json of a passphrase
// needs them). One that disagrees with the backend's is ignored.
func registerOldKeys(db *metastore.DB, sv *Survey, log *slog.Logger) error {
	vs := make([]uint16, 0, len(sv.Keys))
	for v := range sv.Keys {
		vs = append(vs, v)
	}
	slices.Sort(vs)
	return db.Import(func(im *metastore.Importer) error {
		for _, v := range vs {
			raw := sv.Keys[v]
			if reg, err := keyring.ParseRegistration(raw); err != nil || reg.EncVersion != v {
				log.Warn("ignoring a damaged key registration of the old metastore", "encryption_version", v, "err", err)
				continue
			}
			if cur, ok := im.EncVersion(v); ok {
				if !sameKey(cur, raw) {
					log.Warn("the old metastore registers another key for the encryption version than the data backend; keeping the backend's", "encryption_version", v, "object", keyring.ObjectName(v))
				}
				continue
			}
			if err := im.RegisterEncVersion(v, raw); err != nil {
				return err
			}
			log.Info("took a key registration missing from the data backend from the old metastore", "encryption_version", v)
		}
		return nil
	})
}

// compareOld brings into db the versions of the old metastore (surveyed
// as sv) that the rebuild from the backend lacks, from the old metastore
// itself, and records in res those it cannot.
func compareOld(ctx context.Context, db *metastore.DB, path string, sv *Survey, o RebuildOptions, res *RebuildResult) error {
	vs, err := db.Versions(nil)
	if err != nil {
		return err
	}
	have := map[string]bool{}
	for _, v := range vs {
		have[v.UID] = true
	}
	unreadable := map[string]bool{}
	for _, uid := range res.Unreadable {
		unreadable[uid] = true
	}
	backendWhy := func(uid string) string {
		if unreadable[uid] {
			return "its metadata in the data backend is unreadable, and "
		}
		return "the data backend has no metadata of it, and "
	}
	lose := func(v *metastore.Version, why string) {
		res.Lost = append(res.Lost, LostVersion{UID: v.UID, Volume: v.Volume, Date: v.Date, Status: string(v.Status), Why: backendWhy(v.UID) + why})
	}
	var want []*metastore.Version
	for _, v := range sv.Versions {
		switch {
		case have[v.UID]:
		case v.Removing:
			o.Logger.Info("not rebuilt: the old metastore was removing the version", "version", v.UID, "volume", v.Volume)
		default:
			want = append(want, v)
		}
	}
	for _, k := range sv.Undecodable {
		uid, err := strconv.Unquote(k)
		if err == nil && have[uid] {
			continue
		}
		if err != nil {
			uid = k
		}
		res.Lost = append(res.Lost, LostVersion{UID: uid, Why: backendWhy(uid) + "its record in the old metastore does not decode"})
	}
	if len(want) > 0 {
		if err := recoverOld(ctx, db, path, want, o, res, lose); err != nil {
			return err
		}
	}
	// A version taken from the old metastore or reported lost is not
	// "unreadable" any more: that list is what nothing else accounts for.
	accounted := map[string]bool{}
	for _, uid := range res.Recovered {
		accounted[uid] = true
	}
	for _, l := range res.Lost {
		accounted[l.UID] = true
	}
	res.Unreadable = slices.DeleteFunc(res.Unreadable, func(uid string) bool { return accounted[uid] })
	if o.AcceptLoss {
		// Refused otherwise, and the error lists them.
		for _, l := range res.Lost {
			o.Logger.Warn("a version the old metastore has is not rebuilt (--accept-loss)", "version", l.UID, "volume", l.Volume, "date", l.Date, "why", l.Why)
		}
	}
	return nil
}

// recoverOld takes the versions want from the old metastore at path.
func recoverOld(ctx context.Context, db *metastore.DB, path string, want []*metastore.Version, o RebuildOptions, res *RebuildResult, lose func(*metastore.Version, string)) error {
	dir, err := os.MkdirTemp(filepath.Dir(path), "."+filepath.Base(path)+".salvage-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	uids := make([]string, len(want))
	for i, v := range want {
		uids[i] = v.UID
	}
	why, err := o.Salvager.Export(ctx, path, uids, dir)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		why = map[string]string{}
		for _, uid := range uids {
			why[uid] = fmt.Sprintf("reading it from the old metastore failed: %v", err)
		}
	}
	for _, v := range want {
		if w, ok := why[v.UID]; ok {
			lose(v, w)
			continue
		}
		st, err := importSalvaged(ctx, db, ExportFile(dir, v.UID), v.UID)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			lose(v, fmt.Sprintf("taking it from the old metastore failed: %v", err))
			continue
		}
		res.Recovered = append(res.Recovered, v.UID)
		res.Versions++
		res.Blocks += st.blocks
		res.Records += st.records
		res.Conflicts += st.conflicts
		o.Logger.Warn("the data backend has no readable metadata of the version: took it from the old metastore (its metadata is written to the backend again)",
			"version", v.UID, "volume", v.Volume, "date", v.Date)
	}
	return nil
}

// importSalvaged imports the stream in file, which must hold exactly
// version uid, in one transaction. The version counts as changed, so its
// snapshot is written to the backend by the next sync.
func importSalvaged(ctx context.Context, db *metastore.DB, file, uid string) (snapStats, error) {
	var st snapStats
	f, err := os.Open(file)
	if err != nil {
		return st, err
	}
	defer f.Close()
	mr, err := manifest.NewReader(f)
	if err != nil {
		return st, err
	}
	if err := checkStore(db, mr.Store()); err != nil {
		return st, err
	}
	err = db.Import(func(im *metastore.Importer) error {
		st = snapStats{}
		if err := registerKeys(im, mr.Keys()); err != nil {
			return err
		}
		n := 0
		for {
			if err := ctx.Err(); err != nil {
				return err
			}
			v, err := mr.NextVersion()
			if err == io.EOF {
				break // the trailer verified
			}
			if err != nil {
				return err
			}
			if n++; n > 1 || v.UID != uid {
				return fmt.Errorf("%w: the old metastore's stream of %s holds version %s", manifest.ErrInvalid, uid, v.UID)
			}
			if err := im.CreateVersion(v); err != nil {
				return err
			}
			for {
				p, err := mr.NextPage()
				if err == io.EOF {
					break
				}
				if err != nil {
					return err
				}
				c, err := im.AppendPage(v.UID, p.IDs, p.Records)
				if err != nil {
					return err
				}
				st.conflicts += c
				st.blocks += int64(len(p.IDs))
				st.records += int64(len(p.Records))
			}
		}
		if n == 0 {
			return fmt.Errorf("%w: the old metastore's stream of %s holds no version", manifest.ErrInvalid, uid)
		}
		return nil
	})
	return st, err
}

// lossError says which versions a rebuild would lose.
func lossError(path string, lost []LostVersion) error {
	var b strings.Builder
	for i, l := range lost {
		if i == 5 {
			fmt.Fprintf(&b, "; and %d more (listed on standard output)", len(lost)-i)
			break
		}
		if i > 0 {
			b.WriteString("; ")
		}
		if l.Volume != "" {
			fmt.Fprintf(&b, "%s (volume %s, %s, %s): %s", l.UID, l.Volume, l.Date.UTC().Format("2006-01-02 15:04:05 UTC"), l.Status, l.Why)
		} else {
			fmt.Fprintf(&b, "%s: %s", l.UID, l.Why)
		}
	}
	return fmt.Errorf("%w: %d version(s) the metastore %s has would not be in the rebuilt one: %s. Nothing was changed. "+
		"Put their metadata back into the data backend if you can (a copy of versions/, or 'backy export' files imported after the rebuild), "+
		"or run 'backy rebuild-metastore --accept-loss' to rebuild without them (the old metastore is kept as %s.replaced-<time>)",
		ErrLoss, len(lost), path, b.String(), path)
}

// writeKeyObjects writes keys/<N>.json for every registration of db that
// the backend lacks (taken from the snapshots or the old metastore), so
// the backend describes its keys by itself again.
func writeKeyObjects(ctx context.Context, db *metastore.DB, be backend.Backend, log *slog.Logger) error {
	regs, err := db.EncVersions()
	if err != nil {
		return err
	}
	vs := make([]uint16, 0, len(regs))
	for v := range regs {
		vs = append(vs, v)
	}
	slices.Sort(vs)
	wrote := false
	for _, v := range vs {
		name := keyring.ObjectName(v)
		got, err := be.Get(ctx, name, nil)
		switch {
		case err == nil:
			if !bytes.Equal(got, regs[v]) {
				log.Warn("the data backend's key registration differs from the rebuilt metastore's; leaving it", "object", name)
			}
			continue
		case !errors.Is(err, backend.ErrNotFound):
			return fmt.Errorf("reading %s: %w", name, err)
		}
		if err := be.Put(ctx, name, regs[v]); err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
		wrote = true
		log.Warn("the data backend lacked a key registration; wrote it again", "object", name)
	}
	if wrote {
		return backend.Sync(ctx, be)
	}
	return nil
}
