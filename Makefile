# cloudlet VM synthesis: `make demo` and `make test` do all set-up on a fresh
# Debian 12 machine as root (apt packages, Go modules, the guest kit).
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
BIN := $(CURDIR)/bin
CLOUDLET_GUEST_DIR ?= $(CURDIR)/.cache/guest
export CLOUDLET_GUEST_DIR
TOOLS := vm-capture mem-diff disk-diff overlay-pack overlay-apply vm-resume stream-inspect cloudlet-base vm-console overlay-keygen vm-handoff cloudletd
APT_PKGS := qemu-system-x86 qemu-utils busybox-static cpio e2fsprogs kmod openssh-server openssh-client socat xdelta3 zstd xz-utils \
	syslinux syslinux-common syslinux-efi mtools dosfstools fdisk ovmf jq curl \
	gcc libc6-dev liblzma-dev fuse3 nftables iproute2
# The tools link liblzma through cgo (lib/codec: the xz tool's encoder and
# decoder). `make build CGO_ENABLED=0` builds the pure-Go xz path instead.
CGO_ENABLED ?= 1
export CGO_ENABLED

.PHONY: all deps build kit test demo bench lint fuzz clean

all: build

deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing" >&2; \
		if [ "$$(id -u)" != 0 ]; then echo "run as root (or install:$$missing)" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@# libvirt for the libvirt tests and vm-resume --libvirt, without the
	@# recommended packages (dnsmasq, firewalld, ...): scripts/libvirtd.sh
	if [ "$$(id -u)" = 0 ]; then bash scripts/libvirtd.sh install; fi
	$(GO) mod download

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ $(addprefix ./cmd/,$(TOOLS))

kit: deps
	bash scripts/guest-kit.sh $(CLOUDLET_GUEST_DIR)
	bash scripts/guest-image.sh $(CLOUDLET_GUEST_DIR)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out" >&2; exit 1; fi
	$(GO) vet ./...

test: deps build kit lint
	PATH=$(BIN):$$PATH $(GO) test -timeout 25m ./...
	# the pure-Go xz path (builds without cgo) against the same tests
	CGO_ENABLED=0 $(GO) test -count=1 ./lib/codec/ ./lib/overlay/ ./cmd/overlay-pack/ ./cmd/overlay-apply/

demo: deps build kit
	PATH=$(BIN):$$PATH bash scripts/demo.sh

bench: deps build kit
	PATH=$(BIN):$$PATH bash scripts/bench.sh
	# early start (issue 16): adds the early_start keys to bench/results.json
	PATH=$(BIN):$$PATH bash scripts/early-start.sh
	# synthesis into a libvirt domain against the plain path (issue 17)
	PATH=$(BIN):$$PATH bash scripts/libvirt-bench.sh
	# crafted inputs at full size (issue 32): CPU seconds, peak disk and output per MB of input against a real overlay's
	set -o pipefail; $(GO) test -count=1 -run XXX -bench Hostile -benchtime 1x -timeout 30m ./test/hostile/ | tee bench/hostile.txt
	# live handoff (issue 26): vm-handoff against stop-and-copy and stock QEMU migration at 10, 25, 100 Mbit/s
	set -o pipefail; $(GO) test -count=1 -run XXX -bench Handoff -benchtime 1x -timeout 90m ./test/e2e/ | tee bench/handoff.txt
	# the load test: 8 clients synthesize one overlay through the listener at once
	PATH=$(BIN):$$PATH CLOUDLET_LOAD_CLIENTS=8 $(GO) test -count=1 -v -run 'TestSynthesisEndToEnd/tcp-many-at-once' ./test/e2e/

# Each fuzz target for FUZZTIME. Minimizing each new input is capped at 1s:
# with Go's default (60s) the engine spends nearly all its time minimizing.
FUZZTIME ?= 60s
fuzz:
	$(GO) test -run XXX -fuzz '^FuzzReader$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./format/
	$(GO) test -run XXX -fuzz '^FuzzSplit$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./lib/migstream/
	$(GO) test -run XXX -fuzz '^FuzzApply$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./lib/overlay/
	$(GO) test -run XXX -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./lib/delta/
	$(GO) test -run XXX -fuzz '^FuzzXZ$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./lib/codec/
	$(GO) test -run XXX -fuzz '^FuzzImport$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./cmd/cloudlet-base/
	$(GO) test -run XXX -fuzz '^FuzzParseCommand$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./lib/service/
	$(GO) test -run XXX -fuzz '^FuzzClientsFile$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./lib/service/
	$(GO) test -run XXX -fuzz '^FuzzPreAuth$$' -fuzztime $(FUZZTIME) -fuzzminimizetime 1s ./lib/service/

clean:
	rm -rf $(BIN)
