package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMetrics: with [metrics] on, the page shows what the services did,
// in the Prometheus text format, while a client connection is still open.
func TestMetrics(t *testing.T) {
	dir := t.TempDir()
	msock := filepath.Join(dir, "metrics.sock")
	sasl := filepath.Join(dir, "sasl.sock")
	smap := filepath.Join(dir, "socketmap.sock")
	cfg := filepath.Join(dir, "config.toml")
	text := "[store]\npath = \"" + filepath.Join(dir, "store.db") + "\"\n" +
		"[http]\nlisten = \"unix:" + msock + "\"\n[metrics]\nenabled = true\n" +
		"[saslauthd]\nlisten = \"unix:" + sasl + "\"\n" +
		"[socketmap]\nlisten = [\"unix:" + smap + "\"]\n" +
		"[lmtp]\nenabled = false\n[vacation]\nenabled = false\n"
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startServe(t, dir, "-config", cfg)
	d.waitLog(t, "ready")

	if reply := saslauthdAsk(t, sasl, "nobody@example.org", "secret", "imap", ""); !strings.HasPrefix(reply, "NO") {
		t.Fatalf("saslauthd reply %q", reply)
	}
	sm, err := net.Dial("unix", smap)
	if err != nil {
		t.Fatal(err)
	}
	defer sm.Close()
	sm.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(sm, "18:domain example.org,")
	if line, err := bufio.NewReader(sm).ReadString(','); err != nil || !strings.Contains(line, "NOTFOUND") {
		t.Fatalf("socketmap reply %q, %v", line, err)
	}

	page := scrape(t, msock)
	for _, want := range []string{
		`cyrus_sidecar_saslauthd_requests_total{result="rejected"} 1`,
		`cyrus_sidecar_saslauthd_request_duration_seconds_count{result="rejected"} 1`,
		`cyrus_sidecar_saslauthd_cache_lookups_total{result="miss"} 1`,
		`cyrus_sidecar_socketmap_requests_total{map="domain",status="NOTFOUND"} 1`,
		`cyrus_sidecar_socketmap_requests_total{map="mailbox",status="OK"} 0`,
		`cyrus_sidecar_socketmap_cache_lookups_total{result="miss"} 1`,
		`cyrus_sidecar_connections_total{service="saslauthd"} 1`,
		`cyrus_sidecar_connections_total{service="socketmap"} 1`,
		`cyrus_sidecar_connections_open{service="socketmap"} 1`,
		`cyrus_sidecar_saslauthd_verify_workers `,
		`cyrus_sidecar_store_up 1`,
		`cyrus_sidecar_build_info{version="`,
		"# TYPE cyrus_sidecar_socketmap_request_duration_seconds histogram",
		"process_resident_memory_bytes ",
		"go_goroutines ",
	} {
		if !strings.Contains(page, "\n"+want) {
			t.Errorf("metrics page lacks %q", want)
		}
	}
	if strings.Contains(page, "secret") || strings.Contains(page, "nobody") {
		t.Error("the metrics page shows a login or a password")
	}
}

// scrape GETs /metrics over the UNIX socket.
func scrape(t *testing.T, sock string) string {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := client.Get("http://sidecar/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q", ct)
	}
	return "\n" + string(body)
}

// saslauthdAsk sends one saslauthd request and returns the reply.
func saslauthdAsk(t *testing.T, sock string, fields ...string) string {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	var req []byte
	for _, f := range fields {
		req = binary.BigEndian.AppendUint16(req, uint16(len(f)))
		req = append(req, f...)
	}
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	var n uint16
	if err := binary.Read(c, binary.BigEndian, &n); err != nil {
		t.Fatalf("reply: %v", err)
	}
	reply := make([]byte, n)
	if _, err := io.ReadFull(c, reply); err != nil {
		t.Fatal(err)
	}
	return string(reply)
}
