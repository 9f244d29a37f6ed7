# SPDX-License-Identifier: Apache-2.0
# bpfnet: make help lists the targets.
SHELL := /bin/bash
GO ?= go
ARCH_INCLUDE := /usr/include/$(shell uname -m)-linux-gnu
export BPF2GO_CC ?= clang
export BPF2GO_CFLAGS ?= -O2 -g -Wall -Werror -I$(ARCH_INCLUDE)
BIN := bin/bpfnet
# The CNI plugin's binary is named after its CNI type, bpfnet, in a folder of its own.
CNI_BIN := bin/cni/bpfnet
DEPS := clang systemd clang-format llvm libbpf-dev bpftool iproute2 iptables nftables iperf3 busybox-static util-linux prometheus docker.io docker-compose
TEST_TIMEOUT ?= 60m
# Time each fuzz target runs under make fuzz; make test runs each for TEST_FUZZTIME.
FUZZTIME ?= 60s
TEST_FUZZTIME ?= 20s
FUZZ_TARGETS := FuzzSockAddr FuzzFromNetdev FuzzToNetdev FuzzFromContainer FuzzToContainer FuzzCgroupSkb

.PHONY: help deps generate build install uninstall test test-unit fuzz demo bench lint format clean

# make install: PREFIX, BINDIR, UNITDIR and DESTDIR as the GNU coding
# standards and Debian's packaging tools use them. A local install
# (PREFIX=/usr/local) puts the unit in /usr/local/lib/systemd/system, a
# folder systemd reads (systemd-analyze unit-paths) and no package owns;
# PREFIX=/usr, as a Debian package builds, puts it where systemd.pc says
# packages' units go (/lib/systemd/system on Debian 12, where
# dh_installsystemd looks for them).
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
UNITDIR ?= $(if $(filter /usr,$(PREFIX)),$(or $(shell pkg-config --variable=systemdsystemunitdir systemd 2>/dev/null),/lib/systemd/system),$(PREFIX)/lib/systemd/system)
UNITS := deploy/systemd/bpfnet.service deploy/systemd/bpfnet-cni.service
# The CNI plugin's folder: the reference plugins' and Kubernetes' default
# (Debian's containerd and Podman read /usr/lib/cni: CNI_BINDIR=/usr/lib/cni).
CNI_BINDIR ?= /opt/cni/bin

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

deps: ## Install every Debian package the project needs (idempotent)
	@missing=$$(for p in $(DEPS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

generate: ## Compile bpf/*.c into datapath/*_bpfel.{go,o} with bpf2go
	cd datapath && $(GO) generate ./...

build: ## Build bin/bpfnet and the CNI plugin bin/cni/bpfnet (its CNI type is bpfnet)
	$(GO) build -o $(BIN) ./cmd/bpfnet
	$(GO) build -o $(CNI_BIN) ./cmd/bpfnet-cni

install: build ## Install bpfnet in $(BINDIR), the CNI plugin in $(CNI_BINDIR), bpfnet.service and bpfnet-cni.service in $(UNITDIR) (DESTDIR honoured)
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/bpfnet
	install -D -m 0755 $(CNI_BIN) $(DESTDIR)$(CNI_BINDIR)/bpfnet
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	for u in $(UNITS); do \
		sed 's|@BINDIR@|$(BINDIR)|g' $$u > $(DESTDIR)$(UNITDIR)/$$(basename $$u) && \
		chmod 0644 $(DESTDIR)$(UNITDIR)/$$(basename $$u) || exit 1; \
	done
	@test -n "$(DESTDIR)" || echo 'next: /etc/docker/daemon.json (README.md, "Running bpfnet as a service"), then: systemctl daemon-reload && systemctl enable --now bpfnet (or, on a CNI node, bpfnet-cni)'

uninstall: ## Remove what make install installed (stop the service first: systemctl disable --now bpfnet)
	rm -f $(DESTDIR)$(BINDIR)/bpfnet $(DESTDIR)$(CNI_BINDIR)/bpfnet $(foreach u,$(UNITS),$(DESTDIR)$(UNITDIR)/$(notdir $(u)))

test: deps ## Run every test (root: namespaces, BPF, dockerd), then each fuzz target for TEST_FUZZTIME
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -p 1 ./...
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(TEST_FUZZTIME)

# Unit mode: go test -short. Tests that need root or an installed program
# skip there (lab.RequireRoot, lab.RequireTools); under make test they fail.
test-unit: ## Run the tests that need no root and no packages (go test -short)
	$(GO) test -count=1 -short ./...

# Go 1.26's fuzz coordinator can fail a duration-bounded run at its deadline
# with "context deadline exceeded" and no failing input (go.dev/issue/75804,
# fixed in Go 1.27): such a run is reported, not failed. Any run that writes
# a failing input to testdata/fuzz, or fails otherwise, fails the target.
fuzz: deps ## Fuzz every BPF program, one target after the other, for FUZZTIME each (default 60s)
	@for t in $(FUZZ_TARGETS); do \
		echo "fuzzing $$t for $(FUZZTIME)"; \
		before=$$(ls datapath/testdata/fuzz/$$t 2>/dev/null | wc -l); \
		out=$$($(GO) test -count=1 -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) ./datapath 2>&1); rc=$$?; \
		echo "$$out"; \
		[ $$rc -eq 0 ] && continue; \
		after=$$(ls datapath/testdata/fuzz/$$t 2>/dev/null | wc -l); \
		if [ "$$after" = "$$before" ] && ! grep -q 'Failing input written' <<<"$$out" && \
			[ "$$(grep -c -- '--- FAIL' <<<"$$out")" = 1 ] && grep -qx '    context deadline exceeded' <<<"$$out"; then \
			echo "$$t: stopped at its deadline by Go's fuzz coordinator, no failing input (go.dev/issue/75804)"; \
		else \
			exit 1; \
		fi; \
	done

demo: deps build ## Show bpfnet at work in a namespace lab
	./$(BIN) demo

bench: deps build ## Compare routing, iptables and eBPF in a namespace lab
	./$(BIN) bench

lint: ## gofmt, go vet, and the committed bpf2go outputs match the C sources
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }
	@missing=$$(for f in $$(git ls-files '*.go' '*.c' '*.h' | grep -v '_bpfel.go$$'); do head -3 $$f | grep -q SPDX-License-Identifier || echo $$f; done); \
	test -z "$$missing" || { echo "no SPDX line in:" $$missing; exit 1; }
	$(GO) vet ./...
	@tmp=$$(mktemp -d) && cp datapath/*_bpfel.go datapath/*_bpfel.o $$tmp/ && \
	$(MAKE) -s generate && \
	for f in $$tmp/*; do cmp -s $$f datapath/$$(basename $$f) || { echo "datapath/$$(basename $$f) does not match bpf/: run make generate"; rm -rf $$tmp; exit 1; }; done; \
	rm -rf $$tmp; echo "bpf2go outputs match the C sources"

format: ## Format Go and C sources (bpf/ in kernel style, .clang-format)
	gofmt -w .
	clang-format -i bpf/*.c bpf/lib/*.h

clean: ## Remove build outputs
	rm -rf bin
