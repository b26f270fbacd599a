package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
)

func cmdCheckConfig(args []string, std stdio, getenv func(string) string) error {
	c := newCommand("check-config", "check-config [-config FILE]", std, getenv)
	pos, err := c.parse(args)
	if err != nil {
		return err
	}
	if err := c.want(pos, 0, 0, "no arguments"); err != nil {
		return err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return err
	}
	path := configPath(*c.config, getenv, systemConfigPath)
	cfg, err := loadConfig(path, getenv, cwd)
	if err != nil {
		return err
	}
	if path == "" {
		path = "(none: built-in defaults)"
	}
	return c.printTable([]string{"SETTING", "VALUE"}, [][]string{
		{"config", path},
		{"store", cfg.Store.Path},
		{"state_dir", cfg.StateDir},
		{"runtime_dir", cfg.RuntimeDir},
		{"cyrus.default_domain", dash(cfg.Cyrus.DefaultDomain)},
		{"cyrus.lmtp", string(cfg.Cyrus.LMTP)},
		{"log", fmt.Sprintf("%s, %s", cfg.Log.Format, slog.Level(cfg.Log.Level))},
		{"saslauthd", onOff(cfg.Saslauthd.Enabled, cfg.Saslauthd.Listen)},
		{"lmtp", onOff(cfg.LMTP.Enabled, strings.Join(cfg.LMTP.Listen, " "))},
		{"socketmap", onOff(cfg.Socketmap.Enabled, strings.Join(cfg.Socketmap.Listen, " "))},
		{"vacation", onOff(cfg.Vacation.Enabled, "ManageSieve "+string(cfg.Cyrus.ManageSieve)+", policy "+cfg.Vacation.Policy)},
		{"events", onOff(cfg.Events.Enabled, "notify socket "+cfg.Events.Ingest.Socket+", reconciler IMAP "+string(cfg.Cyrus.IMAP))},
		{"http", onOff(cfg.Metrics.Enabled || cfg.Events.Enabled, string(cfg.HTTP.Listen)+httpRoutes(cfg))},
	})
}

func onOff(enabled bool, where string) string {
	if !enabled {
		return "disabled"
	}
	return where
}

// httpRoutes names what the HTTP listener serves.
func httpRoutes(cfg *Config) string {
	var r []string
	if cfg.Metrics.Enabled {
		r = append(r, "/metrics")
	}
	if cfg.Events.Enabled {
		r = append(r, "/events")
	}
	return " (" + strings.Join(r, ", ") + ")"
}
