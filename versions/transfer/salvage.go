package transfer

import (
	"context"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/backy/backy/internal/atomicfile"
	"github.com/backy/backy/metastore"
	"github.com/backy/backy/versions/manifest"
)

// Salvager reads an old metastore that may be damaged, for Rebuild: what
// versions it knows, and the metadata of some of them as version metadata
// streams. InProcess reads it in this process (metastore.Salvage turns
// bbolt's panics into errors); cmd/backy runs InProcess in a child process
// of itself, so that damage which makes bbolt crash the process costs the
// rebuild nothing but that old metastore's help.
type Salvager interface {
	// Survey returns the old metastore's identity, versions and key
	// registrations.
	Survey(ctx context.Context, path string) (*Survey, error)
	// Export writes, for each of uids whose metadata reads completely
	// and consistently from the old metastore, a version metadata stream
	// of it to the file ExportFile(dir, uid) (complete, or absent), and
	// returns, for each of the others, why not.
	Export(ctx context.Context, path string, uids []string, dir string) (map[string]string, error)
}

// Survey is what an old metastore knows, as far as it reads.
type Survey struct {
	StoreID   string `json:"store_id"`
	BlockSize int64  `json:"block_size"`
	Schema    int    `json:"schema"`
	// Versions are those whose records decode; Undecodable the keys of
	// the others (they cannot be compared, and are reported).
	Versions    []*metastore.Version `json:"versions"`
	Undecodable []string             `json:"undecodable,omitempty"`
	// Keys are the key registrations by encryption version; KeysError
	// says why they could not be read.
	Keys      map[uint16][]byte `json:"keys,omitempty"`
	KeysError string            `json:"keys_error,omitempty"`
}

// ExportFile is where Salvager.Export writes the stream of uid.
func ExportFile(dir, uid string) string { return filepath.Join(dir, uid+".bkm") }

// InProcess is the Salvager that reads in this process.
type InProcess struct{}

// Survey implements Salvager.
func (InProcess) Survey(ctx context.Context, path string) (*Survey, error) {
	s, err := metastore.OpenSalvage(path)
	if err != nil {
		return nil, err
	}
	vs, bad, err := s.Versions()
	if err != nil {
		return nil, err
	}
	sv := &Survey{StoreID: hex.EncodeToString(s.StoreID[:]), BlockSize: s.BlockSize, Schema: s.Schema, Versions: vs, Undecodable: bad}
	if sv.Keys, err = s.EncVersions(); err != nil {
		sv.Keys, sv.KeysError = nil, err.Error()
	}
	return sv, nil
}

// Export implements Salvager.
func (InProcess) Export(ctx context.Context, path string, uids []string, dir string) (map[string]string, error) {
	s, err := metastore.OpenSalvage(path)
	if err != nil {
		return nil, err
	}
	vs, _, err := s.Versions()
	if err != nil {
		return nil, err
	}
	regs, err := s.EncVersions()
	if err != nil {
		return nil, err
	}
	var keys []manifest.KeyReg
	for v, reg := range regs {
		keys = append(keys, manifest.KeyReg{EncVersion: v, Registration: reg})
	}
	slices.SortFunc(keys, func(a, b manifest.KeyReg) int { return int(a.EncVersion) - int(b.EncVersion) })
	byUID := map[string]*metastore.Version{}
	for _, v := range vs {
		byUID[v.UID] = v
	}
	info := manifest.StoreInfo{StoreID: s.StoreID, BlockSize: s.BlockSize, WrittenBy: "backy rebuild-metastore, from the old metastore"}
	why := map[string]string{}
	for _, uid := range uids {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		v := byUID[uid]
		switch {
		case v == nil:
			why[uid] = "its record in the old metastore does not decode"
		case v.Status == metastore.StatusIncomplete:
			why[uid] = "it is incomplete in the old metastore (its backup had not finished): finish it with 'backy backup --resume' before rebuilding, or remove it"
		case v.Removing:
			why[uid] = "it was being removed"
		default:
			if err := exportSalvaged(s, info, keys, v, ExportFile(dir, uid)); err != nil {
				why[uid] = fmt.Sprintf("its metadata in the old metastore is damaged: %v", err)
			}
		}
	}
	return why, nil
}

// exportSalvaged writes the stream of v, read from s, to path: under a
// temporary name, renamed when complete.
func exportSalvaged(s *metastore.Salvage, info manifest.StoreInfo, keys []manifest.KeyReg, v *metastore.Version, path string) error {
	f, err := atomicfile.Create(path, atomicfile.Options{})
	if err != nil {
		return err
	}
	mw, err := manifest.NewWriter(f, info, keys)
	if err == nil {
		c := *v
		// As catalog.WriteVersion: old backups over-counted a reused
		// short last page.
		c.BlocksDone = min(c.BlocksDone, c.Blocks())
		err = mw.BeginVersion(&c)
	}
	if err == nil {
		err = s.WalkMap(v.UID, func(ch metastore.MapChunk) error { return mw.Page(ch.IDs, ch.Records) })
	}
	if err == nil {
		err = mw.EndVersion()
	}
	if err == nil {
		err = mw.Close()
	}
	if err != nil {
		f.Abort()
		return err
	}
	return f.Commit(context.Background())
}
