package main

import (
	"context"
	"errors"
	"fmt"

	"cyrus-sidecar/store"
)

// cmdBackup writes a consistent, checked copy of the store while serve
// runs (store.Backup); docs/operations.md has the restore steps.
func cmdBackup(args []string, std stdio, getenv func(string) string) error {
	c := newCommand("backup", "backup FILE [-replace] [-json] [-config FILE]", std, getenv).withJSON()
	replace := c.fs.Bool("replace", false, "replace FILE if it exists (atomically: a reader sees the old or the new backup, never part of one)")
	pos, err := c.start(context.Background(), args, 1, 1, "the backup file to write", false)
	if err != nil {
		return err
	}
	defer c.close()
	info, err := c.st.Backup(context.Background(), pos[0], *replace)
	if errors.Is(err, store.ErrBackupExists) {
		return fmt.Errorf("%w; pick a new name (a date in it, for one per day) or add -replace", err)
	}
	if err != nil {
		return err
	}
	if *c.jsonOut {
		return c.printJSON(info)
	}
	fmt.Fprintf(c.std.out, "wrote %s (%s, checked): %d organisations, %d domains, %d users, %d aliases, %d app passwords, %d vacations, %d audit entries\n",
		info.Path, byteSize(info.Bytes), info.Orgs, info.Domains, info.Users, info.Aliases, info.AppPasswords, info.Vacations, info.Logins)
	return nil
}

// byteSize prints n bytes for a person: 512 B, 40.0 KiB, 1.2 MiB.
func byteSize(n int64) string {
	switch {
	case n < 1<<10:
		return fmt.Sprintf("%d B", n)
	case n < 1<<20:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	default:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
}
