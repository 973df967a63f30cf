package main

import (
	"fmt"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/cmd/backy/internal/config"
	"github.com/backy/backy/cmd/backy/internal/ui"
)

func cmdInit(e *env) *cli.Command {
	return &cli.Command{
		Name:      "init",
		Usage:     "create a new, empty store where the configuration says",
		ArgsUsage: " ",
		Description: "Creates the metastore ([MetaBackend] path) and the data backend ([DataBackend] path).\n" +
			"The block size (block_size, or --block-size) is fixed for the life of the store.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "block-size", Usage: "block `SIZE` of the new store, as block_size takes it (e.g. 4MiB, 1MiB or 4194304; default: block_size of the configuration)"},
		},
		Action: func(c *cli.Context) error {
			if err := args(c, 0, 0, "no arguments"); err != nil {
				return err
			}
			bs := e.cfg.Defaults.BlockSize
			if c.IsSet("block-size") {
				var err error
				if bs, err = config.ParseBlockSize("--block-size", c.String("block-size")); err != nil {
					return usageErr("--block-size %v", err)
				}
			}
			s, err := e.createStore(c.Context, bs)
			if err != nil {
				return err
			}
			defer s.Close()
			// Register the configured encryption version's key now, so
			// that the store holds its key id (and KDF salt) from the start.
			if _, err := s.blocks(c.Context); err != nil {
				return fmt.Errorf("store created, but its key could not be registered: %w", err)
			}
			ev := e.cfg.Encryption.Version
			out := map[string]any{"metastore": e.cfg.Meta.Path, "data": s.be.Properties().Location, "block_size": bs, "encryption_version": ev}
			if e.json {
				return ui.JSON(e.stdout, out)
			}
			enc := "off"
			if ev > 0 {
				enc = fmt.Sprintf("version %d", ev)
			}
			_, err = fmt.Fprintf(e.stdout, "created store: metastore %s, data %s, block size %s, encryption %s\n",
				filepath.Clean(e.cfg.Meta.Path), s.be.Properties().Location, ui.Bytes(bs), enc)
			return err
		},
	}
}
