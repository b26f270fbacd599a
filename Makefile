# cyrus-sidecar. The two commands the README promises:
#   go run . serve      run the service (state under ./var with no config)
#   make test           every test, against the real peers (installed when missing)

GO ?= go
PKGS := ./...
# Integration tests start real Cyrus, Exim, saslauthd and postmap; a missing
# peer is a failure in strict mode, never a skip.
TEST_FLAGS ?= -race -count=1 -timeout 25m

.PHONY: test unit peers check fuzz bench build run clean deb

test: peers check
	SIDECAR_STRICT=1 $(GO) test $(TEST_FLAGS) -tags integration $(PKGS)

# Fast tests only: no real peers needed.
unit:
	$(GO) test -race $(PKGS)

peers:
	./.ci/install-peers

check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet -tags integration $(PKGS)

# Each fuzz target for FUZZTIME (default 60s). New crashers land in the
# package's testdata/fuzz/ and must be committed with the fix.
FUZZTIME ?= 60s
fuzz:
	@for pkg in $$($(GO) list $(PKGS)); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$f"; \
			$(GO) test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

# Benchmarks, side by side with the real peers where an issue asks for it;
# results and the exact command go to BENCHMARKS.md.
bench: peers
	$(GO) test -run='^$$' -bench=. -benchmem -count=5 ./store/
	$(GO) test -run='^$$' -bench=. -benchtime=20x -count=3 ./store/password/
	SIDECAR_STRICT=1 $(GO) test -tags integration -run='^$$' -bench=BenchmarkSocketmap -benchtime=2s -count=3 ./services/socketmap/
	SIDECAR_STRICT=1 $(GO) test -tags integration -run='^$$' -bench=BenchmarkSaslauthd -benchtime=2s -count=1 -v ./services/saslauthd/
	SIDECAR_STRICT=1 $(GO) test -tags integration -run='^$$' -bench=BenchmarkLMTP -benchtime=3s -count=1 -v ./services/lmtp/
	SIDECAR_STRICT=1 $(GO) test -tags integration -run='^$$' -bench=BenchmarkVacation -benchtime=1x -count=1 -v ./services/vacation/
	SIDECAR_STRICT=1 $(GO) test -tags integration -run='^$$' -bench=BenchmarkServe -benchtime=1x -count=1 -v .
	SIDECAR_STRICT=1 $(GO) test -tags integration -run='^$$' -bench=BenchmarkEvents -benchtime=1x -count=1 -v .

build:
	$(GO) build -o cyrus-sidecar .

# The Debian package, var/deb/cyrus-sidecar_<version>_<arch>.deb: binary,
# units, safe-mode config (docs/package.md). Needs only dpkg-deb.
deb:
	GO=$(GO) ./systemd/deb/build

run:
	$(GO) run . serve

clean:
	rm -rf var/run cyrus-sidecar
