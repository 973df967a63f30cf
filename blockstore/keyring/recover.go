package keyring

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/backy/backy/blockstore/backend"
	"github.com/backy/backy/blockstore/object"
)

// Recovering a lost registration (Options.Recover).
//
// A registration holds the cipher, the key id and, for a passphrase, the
// KDF's salt and parameters. When neither the registry nor the backend
// has one for a configured version (keys/<N>.json lost with the
// metastore), the cipher and key id of a raw key can be taken again from
// the key itself, provided the store's objects agree: every object header
// names its encryption version, cipher and key id. So the loader reads
// the headers of a few objects (the first chunks of the newest version
// snapshots, then some blocks); if one is at the version, and its cipher
// and key id are the configured key's, the registration is made again
// (registered, and keys/<N>.json rewritten). Another key id is a wrong
// key. A passphrase cannot be recovered this way: the salt is only in the
// registration; the Ring then says exactly that for the version.

const (
	// probeSnapshots and probeBlocks bound the objects read to find one
	// of a version (first chunks of snapshots, then blocks).
	probeSnapshots = 32
	probeBlocks    = 16
	// snapshotPrefix and blockPrefix are where those objects live
	// (docs/FORMAT.md, "Data backend layout").
	snapshotPrefix = "versions/"
	blockPrefix    = "blocks/"
)

var errProbeEnough = errors.New("enough objects listed")

type probed struct {
	name string
	h    object.Header
}

// probeCandidates lists the objects whose headers probe may read, once.
func (l *loader) probeCandidates() error {
	if l.candidates != nil {
		return nil
	}
	var snaps []string
	err := l.be.List(l.ctx, snapshotPrefix, func(info backend.Info) error {
		if strings.HasSuffix(info.Name, "/00000000") {
			snaps = append(snaps, info.Name)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("listing %s to recover a key registration: %w", snapshotPrefix, err)
	}
	// Newest versions (uids sort by age) and generations first: they are
	// sealed at the encryption version in use.
	sort.Sort(sort.Reverse(sort.StringSlice(snaps)))
	snaps = snaps[:min(len(snaps), probeSnapshots)]
	var blocks []string
	err = l.be.List(l.ctx, blockPrefix, func(info backend.Info) error {
		if strings.Contains(info.Name[len(blockPrefix):], "/.") || strings.HasPrefix(info.Name[len(blockPrefix):], ".") {
			return nil
		}
		blocks = append(blocks, info.Name)
		if len(blocks) >= probeBlocks {
			return errProbeEnough
		}
		return nil
	})
	if err != nil && !errors.Is(err, errProbeEnough) {
		return fmt.Errorf("listing %s to recover a key registration: %w", blockPrefix, err)
	}
	l.candidates = append(append([]string{}, snaps...), blocks...)
	return nil
}

// probe returns an object sealed at encryption version v, reading the
// headers of at most probeSnapshots + probeBlocks objects over all calls.
func (l *loader) probe(v uint16) (probed, bool, error) {
	for _, p := range l.headers {
		if p.h.EncVersion == v {
			return p, true, nil
		}
	}
	if err := l.probeCandidates(); err != nil {
		return probed{}, false, err
	}
	for len(l.candidates) > 0 {
		if err := l.ctx.Err(); err != nil {
			return probed{}, false, err
		}
		name := l.candidates[0]
		l.candidates = l.candidates[1:]
		b, err := l.be.Get(l.ctx, name, nil)
		if errors.Is(err, backend.ErrNotFound) {
			continue
		}
		if err != nil {
			return probed{}, false, fmt.Errorf("reading %s to recover a key registration: %w", name, err)
		}
		h, _, err := object.ParseHeader(b)
		if err != nil {
			l.o.Log.Debug("not using an object with a damaged header to recover a key registration", "object", name, "err", err)
			continue
		}
		h.Nonce = nil // b is not kept
		p := probed{name: name, h: h}
		l.headers = append(l.headers, p)
		if h.EncVersion == v {
			return p, true, nil
		}
	}
	return probed{}, false, nil
}

// recoverReg makes the registration of src's version again from the key
// and the objects, when the store lost it. found is false when no object
// of the version was found (the store does not use it, as far as the
// objects read tell).
func (l *loader) recoverReg(src Source, d *derived) (found bool, err error) {
	v := src.EncVersion
	name, loc := ObjectName(v), l.be.Properties().Location
	p, ok, err := l.probe(v)
	if err != nil || !ok {
		return false, err
	}
	if p.h.Cipher != src.Cipher {
		return true, fmt.Errorf("%w: encryption version %d: %s is missing at %s, and the store's objects of this version (%s) use %s, but %s is configured with %s: set its cipher to %s",
			ErrWrongKey, v, name, loc, p.name, p.h.Cipher, src.Origin, src.Cipher, p.h.Cipher)
	}
	if src.isPassphrase() {
		if l.missing == nil {
			l.missing = map[uint16]string{}
		}
		l.missing[v] = fmt.Sprintf("encryption version %d is configured with a passphrase (%s), but its registration %s is missing at %s and the metastore has none: "+
			"the registration holds the argon2id salt and parameters, without which the passphrase gives no key. "+
			"Put %s back from a copy of the data backend, or import an export made before it was lost ('backy import FILE' registers the keys it carries); "+
			"rebuild-metastore also takes it from the old metastore file when that still exists",
			v, src.Origin, name, loc, name)
		l.o.Log.Info("the key registration of a passphrase is missing; the version cannot be read", "encryption_version", v, "object", name, "location", loc)
		return true, nil
	}
	key, err := l.keyFor(src, nil, d)
	if err != nil {
		return true, err
	}
	if key.ID != p.h.KeyID {
		return true, fmt.Errorf("%w: encryption version %d: %s is missing at %s, and the store's objects of this version (%s) carry key id %x, but the key from %s has key id %x: check the key",
			ErrWrongKey, v, name, loc, p.name, p.h.KeyID, src.Origin, key.ID)
	}
	r := Registration{
		Format:     RegistrationFormat,
		EncVersion: v,
		Cipher:     src.Cipher,
		KeyID:      key.ID,
		Registered: l.o.Clock.Now().UTC().Truncate(time.Second),
	}
	b, err := r.Marshal()
	if err != nil {
		return true, err
	}
	if _, err := l.register(src, b, d); err != nil {
		return true, err
	}
	l.o.Log.Warn("the key registration was missing: made it again from the configured key, whose key id the store's objects carry; rewriting it",
		"encryption_version", v, "cipher", src.Cipher.String(), "key_id", fmt.Sprintf("%x", key.ID), "object", name, "checked_against", p.name, "origin", src.Origin)
	return true, nil
}
