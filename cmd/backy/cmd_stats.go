package main

import (
	"fmt"
	"maps"
	"slices"

	"github.com/urfave/cli/v2"

	"github.com/backy/backy/cmd/backy/internal/ui"
	"github.com/backy/backy/metastore"
)

func cmdStats(e *env) *cli.Command {
	return &cli.Command{
		Name:      "stats",
		Usage:     "show the statistics of a version, or of the whole store",
		ArgsUsage: "[VERSION]",
		Action: e.withMetaStore(0, 1, "at most one VERSION", func(c *cli.Context, s *store) error {
			if uid := c.Args().First(); uid != "" {
				v, err := versionArg(s.db, uid)
				if err != nil {
					return err
				}
				if e.json {
					return ui.JSON(e.stdout, v)
				}
				rate := "-"
				if v.DurationSeconds > 0 {
					rate = ui.Bytes(int64(float64(v.Size)/v.DurationSeconds)) + "/s"
				}
				return ui.Table(e.stdout, []string{"FIELD", "VALUE"}, [][]string{
					{"uid", v.UID}, {"volume", v.Volume}, {"status", string(v.Status)}, {"size", fmt.Sprintf("%s (%d)", ui.Bytes(v.Size), v.Size)},
					{"block size", ui.Bytes(v.BlockSize)}, {"bytes read", ui.Bytes(v.BytesRead)}, {"bytes written", ui.Bytes(v.BytesWritten)},
					{"bytes deduplicated", ui.Bytes(v.BytesDeduplicated)}, {"bytes sparse", ui.Bytes(v.BytesSparse)},
					{"duration", fmt.Sprintf("%.2fs (%s)", v.DurationSeconds, rate)},
				})
			}
			st, err := s.db.Stats()
			if err != nil {
				return err
			}
			enc, err := s.db.EncStats()
			if err != nil {
				return err
			}
			if e.json {
				byVersion := map[string]metastore.EncStat{}
				for v, es := range enc {
					byVersion[fmt.Sprint(v)] = es
				}
				return ui.JSON(e.stdout, struct {
					metastore.StoreStats
					Encryption map[string]metastore.EncStat `json:"blocks_by_encryption_version"`
				}{st, byVersion})
			}
			rows := [][]string{
				{"versions", fmt.Sprint(st.Versions)}, {"stored blocks", fmt.Sprint(st.Blocks)},
				{"stored bytes", ui.Bytes(st.StoredBytes)}, {"plain bytes", ui.Bytes(st.PlainBytes)},
				{"unreferenced blocks", fmt.Sprint(st.Unreferenced)}, {"block size", ui.Bytes(st.BlockSize)}, {"created", st.Created},
			}
			evs := slices.Sorted(maps.Keys(enc))
			for _, v := range evs {
				what := fmt.Sprintf("blocks at encryption version %d", v)
				if v == 0 {
					what = "blocks unencrypted (version 0)"
				}
				rows = append(rows, []string{what, fmt.Sprintf("%d (%s)", enc[v].Blocks, ui.Bytes(enc[v].StoredBytes))})
			}
			return ui.Table(e.stdout, []string{"FIELD", "VALUE"}, rows)
		}),
	}
}
