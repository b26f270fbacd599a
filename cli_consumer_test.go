package main

import (
	"encoding/json"
	"errors"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"cyrus-sidecar/services/events"
)

// consumerSecretLine is the secret's own line in consumer add's output.
var consumerSecretLine = regexp.MustCompile(`(?m)^    (whsec_[A-Za-z0-9+/]{43}=)$`)

func consumerEnv(t *testing.T) string {
	t.Helper()
	cfg := testEnv(t)
	mustRun(t, cfg, "", "org", "add", "Acme")
	mustRun(t, cfg, "", "domain", "add", "example.com", "-org", "Acme")
	mustRun(t, cfg, "", "org", "add", "Other")
	mustRun(t, cfg, "", "domain", "add", "other.net", "-org", "Other")
	mustRun(t, cfg, "", "domain", "add", "other.org", "-org", "Other")
	return cfg
}

type listedConsumer struct {
	Name     string   `json:"name"`
	URL      string   `json:"url"`
	Org      string   `json:"organisation"`
	Domains  []string `json:"domains"`
	Scope    []string `json:"scope"`
	Pending  int      `json:"pending"`
	Envelope bool     `json:"envelope"`
	Secret   string   `json:"secret"`
}

func TestCLIConsumerRoundTrip(t *testing.T) {
	cfg := consumerEnv(t)
	out := mustRun(t, cfg, "", "consumer", "add", "groupware", "-url", "https://gw.example.com/hooks/cyrus", "-org", "acme")
	m := consumerSecretLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("consumer add printed no secret line:\n%s", out)
	}
	// The secret is a usable Standard Webhooks secret.
	if key, err := events.ParseSecret(m[1]); err != nil || len(key) != 32 {
		t.Errorf("secret %q: %d bytes, %v", m[1], len(key), err)
	}
	if !strings.Contains(out, "cannot be shown again") || !strings.Contains(out, `organisation "Acme"`) {
		t.Errorf("consumer add output:\n%s", out)
	}
	// Flags before the name, domains repeated and comma-separated, JSON.
	out = mustRun(t, cfg, "", "consumer", "add", "-domain", "Other.NET,other.org", "-domain", "example.com", "crm", "-url", "http://10.0.0.5:8080/in", "-envelope", "-json")
	var added listedConsumer
	if err := json.Unmarshal([]byte(out), &added); err != nil || !strings.HasPrefix(added.Secret, "whsec_") {
		t.Fatalf("consumer add -json: %v\n%s", err, out)
	}
	if !slices.Equal(added.Domains, []string{"example.com", "other.net", "other.org"}) || !added.Envelope {
		t.Errorf("domains %v, envelope %v", added.Domains, added.Envelope)
	}

	out = mustRun(t, cfg, "", "consumer", "list", "-json")
	if strings.Contains(out, "whsec_") {
		t.Errorf("consumer list -json shows a secret:\n%s", out)
	}
	var cs []listedConsumer
	if err := json.Unmarshal([]byte(out), &cs); err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 || cs[0].Name != "crm" || cs[1].Name != "groupware" || cs[1].Org != "Acme" ||
		!slices.Equal(cs[1].Scope, []string{"example.com"}) || cs[1].URL != "https://gw.example.com/hooks/cyrus" ||
		!cs[0].Envelope || cs[1].Envelope {
		t.Errorf("consumer list -json = %+v", cs)
	}
	table := mustRun(t, cfg, "", "consumer", "list")
	if !strings.HasPrefix(table, "NAME") || !strings.Contains(table, "groupware") || strings.Contains(table, "whsec_") ||
		!strings.Contains(table, "ENVELOPE") || !regexp.MustCompile(`(?m)^crm .* yes `).MatchString(table) ||
		!regexp.MustCompile(`(?m)^groupware .* no `).MatchString(table) {
		t.Errorf("consumer list:\n%s", table)
	}

	// rotate: a new secret, the old one signing for the grace time.
	var rot struct {
		Name, Secret   string
		OldSecretUntil time.Time `json:"old_secret_until"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, cfg, "", "consumer", "rotate", "crm", "-grace", "2h", "-json")), &rot); err != nil ||
		!strings.HasPrefix(rot.Secret, "whsec_") || rot.Secret == added.Secret || time.Until(rot.OldSecretUntil) < 119*time.Minute {
		t.Errorf("consumer rotate -json: %+v, %v", rot, err)
	}
	if table := mustRun(t, cfg, "", "consumer", "list"); !regexp.MustCompile(`(?m)^crm .* enabled; old secret signs until \d{4}-\d\d-\d\d \d\d:\d\dZ$`).MatchString(table) {
		t.Errorf("consumer list during a rotation:\n%s", table)
	}
	if out := mustRun(t, cfg, "", "consumer", "rotate", "crm", "-grace", "0"); !strings.Contains(out, "no longer signs") || !strings.Contains(out, "whsec_") {
		t.Errorf("consumer rotate -grace 0: %q", out)
	}
	if table := mustRun(t, cfg, "", "consumer", "list"); strings.Contains(table, "old secret") {
		t.Errorf("consumer list after a rotation without grace:\n%s", table)
	}
	for _, bad := range [][]string{{"crm", "-grace", "-1h"}, {"crm", "-grace", "721h"}, {"nobody"}} {
		if _, _, err := runCLI(t, cfg, "", append([]string{"consumer", "rotate"}, bad...)...); err == nil {
			t.Errorf("consumer rotate %v: no error", bad)
		}
	}

	// disable and enable, by name in any case; the state in the table.
	if out := mustRun(t, cfg, "", "consumer", "disable", "CRM"); !strings.Contains(out, "disabled") {
		t.Errorf("consumer disable: %q", out)
	}
	if table := mustRun(t, cfg, "", "consumer", "list"); !regexp.MustCompile(`(?m)^crm .* disabled: disabled by an admin$`).MatchString(table) ||
		!regexp.MustCompile(`(?m)^groupware .* enabled$`).MatchString(table) {
		t.Errorf("consumer list after disable:\n%s", table)
	}
	mustRun(t, cfg, "", "consumer", "enable", "crm")
	if table := mustRun(t, cfg, "", "consumer", "list"); !regexp.MustCompile(`(?m)^crm .* enabled$`).MatchString(table) {
		t.Errorf("consumer list after enable:\n%s", table)
	}
	if _, _, err := runCLI(t, cfg, "", "consumer", "disable", "nobody"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("disable of an unknown consumer: %v", err)
	}

	if _, _, err := runCLI(t, cfg, "", "consumer", "add", "GROUPWARE", "-url", "https://x.example/", "-org", "Acme"); err == nil ||
		!strings.Contains(err.Error(), "consumer del") {
		t.Errorf("duplicate name: %v", err)
	}
	mustRun(t, cfg, "", "consumer", "del", "groupware")
	if _, _, err := runCLI(t, cfg, "", "consumer", "del", "groupware"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("second del: %v", err)
	}
	if out := mustRun(t, cfg, "", "consumer", "list", "-json"); strings.Contains(out, "groupware") {
		t.Errorf("deleted consumer still listed:\n%s", out)
	}
}

func TestCLIConsumerErrors(t *testing.T) {
	cfg := consumerEnv(t)
	tests := []struct {
		name  string
		args  []string
		usage bool
		want  string
	}{
		{"no subcommand", []string{"consumer"}, true, "expected add"},
		{"unknown subcommand", []string{"consumer", "show"}, true, "unknown subcommand"},
		{"no url", []string{"consumer", "add", "x", "-org", "Acme"}, true, "-url URL is required"},
		{"bad url", []string{"consumer", "add", "x", "-url", "gw.example.com", "-org", "Acme"}, true, "https://"},
		{"no scope", []string{"consumer", "add", "x", "-url", "https://gw.example.com/"}, true, "-org"},
		{"no name", []string{"consumer", "add", "-url", "https://gw.example.com/", "-org", "Acme"}, true, "expected one consumer name"},
		{"unknown org", []string{"consumer", "add", "x", "-url", "https://gw.example.com/", "-org", "Nope"}, false, "org list"},
		{"unhosted domain", []string{"consumer", "add", "x", "-url", "https://gw.example.com/", "-domain", "nope.example"}, false, "domain list"},
		{"bad domain", []string{"consumer", "add", "x", "-url", "https://gw.example.com/", "-domain", "a b"}, false, "not a valid domain"},
	}
	for _, tt := range tests {
		_, _, err := runCLI(t, cfg, "", tt.args...)
		_, isUsage := errors.AsType[usageError](err)
		if err == nil || isUsage != tt.usage || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v (usage %v), want %q (usage %v)", tt.name, err, isUsage, tt.want, tt.usage)
		}
	}
}
