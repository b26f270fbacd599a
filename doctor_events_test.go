package main

import (
	"strings"
	"testing"
)

func TestEventOptions(t *testing.T) {
	safe := map[string]string{}
	for _, l := range eventSafeSet {
		k, v, _ := strings.Cut(l, ": ")
		safe[k] = v
	}
	safe["notifysocket"] = "/run/cyrus-sidecar/notify"
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for a, b := range safe {
			m[a] = b
		}
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	for _, c := range []struct {
		name   string
		conf   map[string]string
		qlen   int
		want   []string // status: detail fragment
		fixHas string
	}{
		{"safe set", safe, 512, []string{"ok: no option"}, ""},
		{"off", with("event_notifier", ""), 512, []string{"FAIL: event_notifier is not set"}, "event_groups: message mailbox flags subscription"},
		{"jmapStates with subscription", with("event_extra_params", "timestamp vnd.fastmail.jmapStates"), 512,
			[]string{"FAIL: event_extra_params vnd.fastmail.jmapStates with event_groups subscription"}, "event_exclude_specialuse: none"},
		{"counters with quota", with("event_groups", "message quota"), -1, nil, ""},
		{"messageContent", with("event_extra_params", "timestamp messageContent"), 512, []string{"FAIL: event_extra_params messageContent"}, ""},
		{"envelope", with("event_extra_params", "timestamp vnd.cmu.envelope"), 512, []string{"warn: event_extra_params vnd.cmu.envelope"}, "remove vnd.cmu.envelope"},
		{"junk default", with("event_exclude_specialuse", ""), 512, []string{`warn: event_exclude_specialuse leaves \Junk`}, ""},
		{"all", with("event_exclude_specialuse", "ALL"), 512, []string{"warn: event_exclude_specialuse: ALL"}, ""},
		{"other socket", with("notifysocket", "/run/cyrus/socket/notify"), 512, []string{`FAIL: Cyrus sends events to notifysocket "/run/cyrus/socket/notify"`}, `listen="/run/cyrus/socket/notifyd"`},
		{"short queue", safe, 10, []string{"warn: net.unix.max_dgram_qlen is 10"}, "max_dgram_qlen=512"},
	} {
		if c.name == "counters with quota" {
			c.conf["event_extra_params"] = "timestamp vnd.fastmail.counters"
			c.want = []string{"FAIL: event_extra_params vnd.fastmail.counters with event_groups quota"}
		}
		got := eventOptions(c.conf, "/run/cyrus-sidecar/notify", c.qlen)
		var lines []string
		fixes := ""
		for _, g := range got {
			lines = append(lines, g.status+": "+g.detail)
			fixes += strings.Join(g.fixes, "\n")
		}
		if len(lines) != len(c.want) {
			t.Errorf("%s: got %q, want %d findings %q", c.name, lines, len(c.want), c.want)
			continue
		}
		for i, w := range c.want {
			if !strings.HasPrefix(lines[i], w) {
				t.Errorf("%s: finding %d = %q, want %q...", c.name, i, lines[i], w)
			}
		}
		if !strings.Contains(fixes, c.fixHas) {
			t.Errorf("%s: fixes %q lack %q", c.name, fixes, c.fixHas)
		}
	}
}
