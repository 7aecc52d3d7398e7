# nest: `make demo` boots nest as PID 1 in a VM; `make test` runs every test.
# Both install what is missing (apt-get) first.

GO      ?= go
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
export CGO_ENABLED = 0
export PATH := $(PATH):/usr/local/go/bin

# Debian packages the tests and the demo need.
DEBS = qemu-system-x86 linux-image-amd64 busybox-static e2fsprogs util-linux
# and the ones `make bench` compares nest run and nest escalate with (bench/).
BENCH_DEBS = bubblewrap crun runc sudo opendoas openssh-server openssh-client

.PHONY: nest deps test vet demo bench clean

nest:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o nest ./init

deps:
	@missing=""; for p in $(DEBS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

vet:
	$(GO) vet ./...
	$(GO) vet -tags vmguest ./vmtest/...
	@test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gofmt: files above need formatting"; exit 1; }

# Unit tests, host tests (as root: namespaces, nest up), the VM tests, and
# a short fuzz run of every decoder of outside input.
test: deps vet
	$(GO) test -count=1 -timeout 20m ./...
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 10s ./config
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime 10s -fuzzminimizetime 200x ./escalate

demo: deps nest
	$(GO) run ./vmtest/nestvm -nest ./nest

# nest as PID 1 in the VM (with 10 services, then with 100 and 1,000
# sibling containers: the latter takes about 20 minutes under emulation),
# then nest run side by side with the floor, bwrap, crun and runc, then
# veth networks on this host's CPU (one package at a time: the timings need
# a quiet machine). NEST_BENCH_N sets the runs per command of nest run's.
bench: deps nest
	@$(MAKE) --no-print-directory deps DEBS='$(BENCH_DEBS)'
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 90m ./vmtest/
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./bench/
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 10m ./net/

clean:
	rm -f nest
