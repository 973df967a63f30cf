package config

import (
	"errors"
	"fmt"
)

// ParseSize parses a size given on the command line in the syntax of the
// configuration's size keys (block_size, bandwidth_*): a number of bytes,
// or a number with K/KiB, M/MiB, G/GiB or T/TiB (binary, case-insensitive), so
// that a size is written the same way everywhere.
func ParseSize(v string) (int64, error) {
	n, ok := parseSize(v)
	if !ok {
		return 0, fmt.Errorf("%s is not a size (expected e.g. 4MiB or 4194304; suffixes K/KiB, M/MiB, G/GiB, T/TiB)", quote(v))
	}
	return n, nil
}

// ParseBlockSize parses a block size given as what (a flag name) as the
// block_size key does, with its range and alignment.
func ParseBlockSize(what, v string) (int64, error) {
	n, msg := parseBlockSize(what, v)
	if msg != "" {
		return 0, errors.New(msg)
	}
	return n, nil
}
