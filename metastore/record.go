package metastore

import (
	"encoding/binary"
	"fmt"

	"github.com/backy/backy/internal/block"
)

// recordV1 is the first byte of an encoded block record.
const recordV1 = 1

// recordSize is the encoded length of a schema-1 block record:
// format 1, flags 1, enc version 2, compression 1, name 16, size 4,
// stored size 4, reference count 8.
const recordSize = 1 + 1 + 2 + 1 + block.NameSize + 4 + 4 + 8

const flagInvalid = 1

type storedRecord struct {
	block.Record
	Refs uint64
}

func encodeRecord(r storedRecord) []byte {
	b := make([]byte, 0, recordSize)
	var flags byte
	if r.Invalid {
		flags |= flagInvalid
	}
	b = append(b, recordV1, flags)
	b = binary.BigEndian.AppendUint16(b, r.EncVersion)
	b = append(b, byte(r.Compression))
	b = append(b, r.Name[:]...)
	b = binary.BigEndian.AppendUint32(b, r.Size)
	b = binary.BigEndian.AppendUint32(b, r.StoredSize)
	return binary.BigEndian.AppendUint64(b, r.Refs)
}

func decodeRecord(id []byte, v []byte) (storedRecord, error) {
	var r storedRecord
	if len(id) != block.IDSize || len(v) != recordSize || v[0] != recordV1 {
		return r, fmt.Errorf("%w: block record %x: bad encoding (%d bytes)", ErrCorrupt, id, len(v))
	}
	copy(r.ID[:], id)
	r.Invalid = v[1]&flagInvalid != 0
	r.EncVersion = binary.BigEndian.Uint16(v[2:])
	r.Compression = block.Compression(v[4])
	copy(r.Name[:], v[5:21])
	r.Size = binary.BigEndian.Uint32(v[21:])
	r.StoredSize = binary.BigEndian.Uint32(v[25:])
	r.Refs = binary.BigEndian.Uint64(v[29:])
	return r, nil
}
