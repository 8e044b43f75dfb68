# inflight — make help lists the targets.
GO        ?= go
CMDS      := $(notdir $(wildcard cmd/*))
BIN       := bin
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/inflight-ota/inflight/internal/buildinfo.Version=$(VERSION)
GOFLAGS_STATIC := CGO_ENABLED=0
# linux/arm v6 and v7 are spelled GOARCH=arm GOARM=6|7.
CROSS     := linux/amd64 linux/arm64 linux/arm/7 linux/arm/6

.PHONY: help build test lint vet fmt cross fuzz bench clean images fly demo

help: ## list the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build every command into ./bin for this machine
	@mkdir -p $(BIN)
	$(GOFLAGS_STATIC) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...

# Packages that fly the bench drone in real time and check control gaps: they run one at a time,
# after the rest, so that two of them never share this machine's cores with each other.
FLIGHT_PKGS := ./bench ./agent/e2e ./demo
test: lint ## lint, then run every test (set INFLIGHT_REQUIRE_SERVICES=1 to fail instead of skip without Docker/mosquitto)
	$(GO) test -count=1 -timeout 15m $$($(GO) list ./... | grep -v -E '/(bench|agent/e2e|demo)$$')
	$(GO) test -count=1 -timeout 15m -p 1 $(FLIGHT_PKGS)

lint: ## gofmt check and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

cross: ## static builds of every command for linux/amd64, arm64, arm v7 and arm v6 into ./bin/<os>-<arch>
	@set -e; for t in $(CROSS); do \
	  os=$$(echo $$t | cut -d/ -f1); arch=$$(echo $$t | cut -d/ -f2); arm=$$(echo $$t | cut -d/ -f3); \
	  dir=$(BIN)/$$os-$$arch$${arm:+v$$arm}; mkdir -p $$dir; \
	  echo "cross $$dir"; \
	  $(GOFLAGS_STATIC) GOOS=$$os GOARCH=$$arch GOARM=$$arm $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $$dir/ ./cmd/...; \
	done

fuzz: ## run each fuzz target for FUZZTIME (default 20s)
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "fuzz $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $${FUZZTIME:-20s} -fuzzminimizetime 20x $$pkg; \
	  done; done

bench: ## run the Go benchmarks
	$(GO) test -run '^$$' -bench . -benchmem ./...

DEMO_ARGS ?=
demo: build ## the in-air update demo: v1 flies, groundctl pushes v2, the agent hands over in the air and commits; summary + plot in bin/demo (DEMO_ARGS="--runtime process" without Docker)
	@mkdir -p $(BIN)/demo
	$(BIN)/benchsim demo --plot $(BIN)/demo/flight.png --trace $(BIN)/demo/flight.jsonl $(DEMO_ARGS)

FLY_ARGS ?= --scenario hover --duration 30s --json
fly: build ## fly the bench drone: take off to 2 m, hover 30 s, land; prints the figures (FLY_ARGS to change)
	$(BIN)/benchsim fly $(FLY_ARGS)

IMAGE_V1 ?= 1.0.0
IMAGE_V2 ?= 2.0.0
IMAGE_V2_FLAGS ?= --state-schema 2 --env INFLIGHT_STATE_SCHEMA=2
images: ## flightctl images v1 and v2 for amd64 (bench), arm64, arm v7, arm v6 into bin/images/ (no docker build needed)
	$(GO) run ./images/build --version $(IMAGE_V1) --platform all --out $(BIN)/images/flightctl-{version}-{arch}.tar
	$(GO) run ./images/build --version $(IMAGE_V2) --platform all --out $(BIN)/images/flightctl-{version}-{arch}.tar $(IMAGE_V2_FLAGS)

clean: ## remove build output
	rm -rf $(BIN)
