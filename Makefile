# backy — see README.md. Every target works on a clean machine with Go.
GO      ?= go
BIN     ?= bin/backy
PREFIX  ?= $(HOME)/go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
STATICCHECK_VERSION := v0.8.2

.PHONY: all build install test test-s3 test-short race bench bench-go bench-rebuild lint fuzz clean

all: build

build:
	$(GO) build -trimpath -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/backy

install:
	$(GO) install -trimpath -ldflags "$(LDFLAGS)" ./cmd/backy

# The whole test suite: unit, end-to-end (built binary, real ext4 images,
# a real S3 server), with the race detector. .ci/run calls exactly this.
# It takes several minutes (the end-to-end package most of them):
# backy-testprogress prints a line per package as it finishes, every minute
# what is still running, and the full output of whatever fails, and exits
# with go test's status.
test:
	$(GO) vet ./...
	$(GO) build -o bin/backy-testprogress ./cmd/backy-testprogress
	GO=$(GO) bin/backy-testprogress -race -count=1 -timeout 30m ./...

# The S3 tier alone: every test named *S3*, against a real S3 server
# (versitygw, built once by the tests' harness with go install at a pinned
# version and cached in ~/.cache/backy-test; see blockstore/backend/s3/s3test).
# `make test` runs these too.
test-s3:
	$(GO) test -race -count=1 -timeout 30m -run 'S3' ./...

test-short:
	$(GO) test -short ./...

# Performance figures (1 GiB random data, 1 GiB ext4 image): see README.
bench: build
	$(GO) run ./cmd/backy-bench -backy $(BIN)

# Go micro-benchmarks of the hot paths.
bench-go:
	$(GO) test -run '^$$' -bench . -benchtime 20x ./blockstore/... ./metastore/...

# rebuild-metastore on a generated store of 1,000 versions (metadata only).
bench-rebuild:
	$(GO) test -run '^$$' -bench Rebuild -benchtime 3x ./versions/transfer/

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# Run every fuzz target for FUZZTIME each.
FUZZTIME ?= 20s
fuzz:
	$(GO) test ./versions/hints -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME)
	$(GO) test ./cmd/backy/internal/config -run '^$$' -fuzz FuzzParse -fuzztime $(FUZZTIME)
	$(GO) test ./blockstore/object -run '^$$' -fuzz FuzzOpen -fuzztime $(FUZZTIME)
	$(GO) test ./metastore/blockmap -run '^$$' -fuzz FuzzDecode -fuzztime $(FUZZTIME)
	$(GO) test ./blockstore/keyring -run '^$$' -fuzz FuzzParseRegistration -fuzztime $(FUZZTIME)
	$(GO) test ./versions/retention -run '^$$' -fuzz FuzzParseRules -fuzztime $(FUZZTIME)
	$(GO) test ./versions/manifest -run '^$$' -fuzz FuzzReader -fuzztime $(FUZZTIME)
	$(GO) test ./versions/transfer -run '^$$' -fuzz FuzzImport -fuzztime $(FUZZTIME)
	$(GO) test ./versions/nbd -run '^$$' -fuzz FuzzRequests -fuzztime $(FUZZTIME)
	$(GO) test ./versions/nbd -run '^$$' -fuzz FuzzOptions -fuzztime $(FUZZTIME)
	$(GO) test ./versions/device -run '^$$' -fuzz FuzzDecodeMap -fuzztime $(FUZZTIME)

clean:
	rm -rf bin
