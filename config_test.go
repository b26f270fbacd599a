package main

import (
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
)

var update = flag.Bool("update", false, "rewrite golden files")

func noEnv(string) string { return "" }

// TestBadConfigs: each testdata/config/bad/X.toml fails with exactly the
// text in X.err (go test -run TestBadConfigs -update rewrites them).
func TestBadConfigs(t *testing.T) {
	files, _ := filepath.Glob("testdata/config/bad/*.toml")
	if len(files) == 0 {
		t.Fatal("no bad configs")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			_, err := loadConfig(f, noEnv, "/srv")
			if err == nil {
				t.Fatalf("loadConfig(%s) succeeded", f)
			}
			golden := strings.TrimSuffix(f, ".toml") + ".err"
			if *update {
				if err := os.WriteFile(golden, []byte(err.Error()+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, rerr := os.ReadFile(golden)
			if rerr != nil {
				t.Fatalf("%v (run with -update to create it)", rerr)
			}
			if got := err.Error() + "\n"; got != string(want) {
				t.Errorf("loadConfig(%s) error:\n%s\nwant:\n%s", f, got, want)
			}
		})
	}
}

func TestGoodConfigs(t *testing.T) {
	files, _ := filepath.Glob("testdata/config/good/*.toml")
	for _, f := range append(files, "config.example.toml") {
		t.Run(filepath.Base(f), func(t *testing.T) {
			if _, err := loadConfig(f, noEnv, "/srv"); err != nil {
				t.Errorf("loadConfig(%s): %v", f, err)
			}
		})
	}
}

// TestExampleDocumentsEveryKey keeps config.example.toml and Config in step:
// every key the program reads appears in the example.
func TestExampleDocumentsEveryKey(t *testing.T) {
	var m map[string]any
	if _, err := toml.DecodeFile("config.example.toml", &m); err != nil {
		t.Fatal(err)
	}
	var walk func(prefix string, typ reflect.Type, m map[string]any)
	walk = func(prefix string, typ reflect.Type, m map[string]any) {
		for f := range typ.Fields() {
			tag := f.Tag.Get("toml")
			if tag == "" || tag == "-" {
				continue
			}
			v, ok := m[tag]
			if !ok {
				t.Errorf("config.example.toml lacks %s%s", prefix, tag)
				continue
			}
			if f.Type.Kind() == reflect.Struct && f.Type != reflect.TypeFor[time.Duration]() {
				sub, _ := v.(map[string]any)
				walk(prefix+tag+".", f.Type, sub)
			}
		}
	}
	walk("", reflect.TypeFor[Config](), m)
}

func TestDefaults(t *testing.T) {
	cfg, err := loadConfig("", noEnv, "/srv/x")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Store.Path != "/srv/x/var/store.db" || cfg.RuntimeDir != "/srv/x/var/run" {
		t.Errorf("defaults without systemd: store %s runtime %s", cfg.Store.Path, cfg.RuntimeDir)
	}
	env := map[string]string{"STATE_DIRECTORY": "/var/lib/cyrus-sidecar:/var/lib/other", "RUNTIME_DIRECTORY": "/run/cyrus-sidecar"}
	cfg, err = loadConfig("", func(k string) string { return env[k] }, "/srv/x")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Store.Path != "/var/lib/cyrus-sidecar/store.db" || cfg.RuntimeDir != "/run/cyrus-sidecar" {
		t.Errorf("defaults under systemd: store %s runtime %s", cfg.Store.Path, cfg.RuntimeDir)
	}
}

func TestConfigPath(t *testing.T) {
	sys := filepath.Join(t.TempDir(), "config.toml")
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	if p := configPath("", getenv, sys); p != "" {
		t.Errorf("no flag, env or system file: %q", p)
	}
	os.WriteFile(sys, nil, 0o644)
	if p := configPath("", getenv, sys); p != sys {
		t.Errorf("system file present: %q", p)
	}
	env["CYRUS_SIDECAR_CONFIG"] = "/env.toml"
	if p := configPath("", getenv, sys); p != "/env.toml" {
		t.Errorf("env: %q", p)
	}
	if p := configPath("/flag.toml", getenv, sys); p != "/flag.toml" {
		t.Errorf("flag: %q", p)
	}
}

func TestMissingConfigFile(t *testing.T) {
	_, err := loadConfig("/nonexistent/config.toml", noEnv, "/srv")
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/config.toml does not exist") {
		t.Errorf("missing file: %v", err)
	}
}
