package config

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// stripPositions clears what Parse keeps for messages only (the position
// index), so that a parsed config can be compared with a written one.
func stripPositions(c *Config) {
	c.ix = nil
	for i := range c.Containers {
		stripContainer(&c.Containers[i])
	}
}

func stripContainer(c *Container) {
	c.ix, c.at, c.id = nil, "", ""
	for i := range c.Containers {
		stripContainer(&c.Containers[i])
	}
}

const fullContainers = `console = "none"

[[service]]
name = "db"
exec = ["/usr/bin/db"]

[container.alice]                   # a user container
kind        = "user"
memory      = "2G"
pids        = 4096
after       = ["db"]
private_tmp = false

[[container.alice.service]]
name = "sshd"
exec = ["/usr/sbin/sshd", "-D"]

[container.alice.container.dev]     # alice's own child
kind     = "user"
user     = "al"
rootfs   = "/srv/dev"
level    = 1
hostname = "dev.alice"

[container.web]                     # a daemon container
kind         = "daemon"
exec         = ["/usr/sbin/nginx", "-g", "daemon off;"]
env          = { PORT = "80" }
dir          = "/srv"
bind         = [{ source = "/var/lib/web", writable = true }, { source = "/etc/ssl", target = "/ssl" }]
memory       = "512M"
memory_high  = "384m"
pids         = 100
cpu          = 0.5
restart      = "always"
after        = ["alice", "db"]
hostname     = "www"
network      = "host"
stop_timeout = "30s"
start_limit  = 3
no_new_privileges = false
nesting      = true
`

// userSandbox and daemonSandbox are the level 1 defaults.
var (
	userSandbox   = Sandbox{PrivateUsers: true, PrivateTmp: true, PrivateDevices: true, ProtectProc: true, ProtectSys: true, Nesting: true, Level: 1}
	daemonSandbox = Sandbox{PrivateUsers: true, PrivateTmp: true, PrivateDevices: true, ProtectProc: true, ProtectSys: true, NoNewPrivileges: true, Level: 1}
)

func TestParseContainers(t *testing.T) {
	alice := Container{
		Name: "alice", Kind: KindUser, Rootfs: RootfsHost, Memory: 2 << 30, Pids: 4096,
		Restart: RestartOnFailure, After: []string{"db"}, Hostname: "alice", Network: NetworkNone,
		User: "alice", StopTimeout: DefaultStopTimeout, StartLimit: DefaultStartLimit,
		Sandbox: Sandbox{PrivateUsers: true, PrivateDevices: true, ProtectProc: true, ProtectSys: true, Nesting: true, Level: 1},
		Services: []Service{{
			Name: "sshd", Exec: []string{"/usr/sbin/sshd", "-D"},
			Restart: RestartOnFailure, StopTimeout: DefaultStopTimeout, StartLimit: DefaultStartLimit,
		}},
		Containers: []Container{{
			Name: "dev", Kind: KindUser, Rootfs: "/srv/dev", Restart: RestartOnFailure, Hostname: "dev.alice",
			Network: NetworkNone, User: "al", StopTimeout: DefaultStopTimeout, StartLimit: DefaultStartLimit,
			Sandbox: userSandbox, File: "t.toml",
		}},
		File: "t.toml",
	}
	web := Container{
		Name: "web", Kind: KindDaemon, Rootfs: RootfsHost,
		Binds: []Bind{
			{Source: "/var/lib/web", Target: "/var/lib/web", Writable: true},
			{Source: "/etc/ssl", Target: "/ssl"},
		},
		Memory: 512 << 20, MemoryHigh: 384 << 20, Pids: 100, CPU: 0.5,
		Restart: RestartAlways, After: []string{"alice", "db"}, Hostname: "www", Network: NetworkHost,
		Exec: []string{"/usr/sbin/nginx", "-g", "daemon off;"}, Env: map[string]string{"PORT": "80"}, Dir: "/srv",
		StopTimeout: 30 * time.Second, StartLimit: 3,
		Sandbox: Sandbox{PrivateUsers: true, PrivateTmp: true, PrivateDevices: true, ProtectProc: true, ProtectSys: true, Nesting: true, Level: 1},
		File:    "t.toml",
	}
	tests := []struct {
		name string
		doc  string
		want *Config
	}{
		{"full", fullContainers, &Config{
			Source:  "t.toml",
			Console: ConsoleNone,
			Services: []Service{{
				Name: "db", Exec: []string{"/usr/bin/db"},
				Restart: RestartOnFailure, StopTimeout: DefaultStopTimeout, StartLimit: DefaultStartLimit,
			}},
			Containers: []Container{alice, web},
		}},
		{"defaults", "[container.b]\nkind = \"user\"\n[container.a]\nkind = \"daemon\"\nexec = [\"/a\"]\n", &Config{
			Source:  "t.toml",
			Console: ConsoleShell,
			Containers: []Container{ // in the order of the file
				{Name: "b", Kind: KindUser, Rootfs: RootfsHost, Restart: RestartOnFailure, Hostname: "b", Network: NetworkNone,
					User: "b", StopTimeout: DefaultStopTimeout, StartLimit: DefaultStartLimit, Sandbox: userSandbox, File: "t.toml"},
				{Name: "a", Kind: KindDaemon, Rootfs: RootfsHost, Restart: RestartOnFailure, Hostname: "a", Network: NetworkNone,
					Exec: []string{"/a"}, StopTimeout: DefaultStopTimeout, StartLimit: DefaultStartLimit, Sandbox: daemonSandbox, File: "t.toml"},
			},
		}},
		{"inline tables", `container = { x = { kind = "daemon", exec = ["/x"], cpu = 2, memory = "100", bind = [{ source = "/d", target = "/e" }] } }`, &Config{
			Source:  "t.toml",
			Console: ConsoleShell,
			Containers: []Container{
				{Name: "x", Kind: KindDaemon, Rootfs: RootfsHost, Binds: []Bind{{Source: "/d", Target: "/e"}}, Memory: 100, CPU: 2,
					Restart: RestartOnFailure, Hostname: "x", Network: NetworkNone, Exec: []string{"/x"},
					StopTimeout: DefaultStopTimeout, StartLimit: DefaultStartLimit, Sandbox: daemonSandbox, File: "t.toml"},
			},
		}},
		{"console free", "console = \"none\"\n[container.console]\nkind = \"user\"\nprivate_users = false\nmemory = \"0\"\ncpu = 0\n", &Config{
			Source:  "t.toml",
			Console: ConsoleNone,
			Containers: []Container{
				{Name: "console", Kind: KindUser, Rootfs: RootfsHost, Restart: RestartOnFailure, Hostname: "console", Network: NetworkNone,
					User: "console", StopTimeout: DefaultStopTimeout, StartLimit: DefaultStartLimit,
					Sandbox: Sandbox{PrivateTmp: true, PrivateDevices: true, ProtectProc: true, ProtectSys: true, Nesting: true, Level: 1}, File: "t.toml"},
			},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse("t.toml", []byte(tt.doc))
			if err != nil {
				t.Fatalf("Parse(%s) = error %v, want no error", tt.name, err)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("Parse(%s) passed, but Validate() = %v", tt.name, err)
			}
			stripPositions(got)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse(%s) =\n%+v\nwant\n%+v", tt.name, got, tt.want)
			}
		})
	}
}

// user and daemon are valid containers to build error cases from: lines
// 1 and 2 are the header and kind, a daemon's line 3 its exec; what a case
// adds starts on line 3 (user) or 4 (daemon).
func user(name string, lines ...string) string {
	return fmt.Sprintf("[container.%s]\nkind = \"user\"\n", name) + strings.Join(lines, "\n") + "\n"
}

func daemon(name string, lines ...string) string {
	return fmt.Sprintf("[container.%s]\nkind = \"daemon\"\nexec = [\"/bin/%s\"]\n", name, name) + strings.Join(lines, "\n") + "\n"
}

func TestParseContainerErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want string // the whole error; "t.toml:" is added to each line
	}{
		// Tables and types.
		{"container not a table", `container = 1`, `1:13: container = 1: want a table for each container, written [container.NAME]`},
		{"container array", "[[container]]\nkind = \"user\"", `1:3: container = [{ … }]: want a table for each container, written [container.NAME]`},
		{"container value", `container.a = 1`, `1:15: container.a = 1: want a table, written [container.a]`},
		{"nested container value", user("a", `container.b = "x"`), `3:15: container "a": container.b = "x": want a table, written [container.a.container.b]`},
		{"service table", user("a", "[container.a.service]"), `3:14: container "a": service = {}: want an array of tables, written [[container.a.service]]`},
		{"kind type", "[container.a]\nkind = 1", `2:8: container "a": kind = 1: want a string`},
		{"bind nest state", daemon("a", `bind = [{ source = "/var/lib/nest/alice/home" }]`), `4:20: container "a": bind[0].source = "/var/lib/nest/alice/home": shows the init's own /var/lib/nest (its config, state or logs), which no container may see; bind a directory beside it`},
		{"bind above nest", daemon("a", `bind = [{ source = "/etc", target = "/host-etc" }]`), `4:20: container "a": bind[0].source = "/etc": shows the init's own /etc/nest (its config, state or logs), which no container may see; bind a directory beside it`},
		{"bind root", daemon("a", `bind = [{ source = "/", target = "/host" }]`), `4:20: container "a": bind[0].source = "/": shows the init's own /etc/nest (its config, state or logs), which no container may see; bind a directory beside it`},
		{"bind type", daemon("a", `bind = "/x"`), `4:8: container "a": bind = "/x": want an array of tables, like [{ source = "/srv/data" }]`},
		{"bind element", daemon("a", `bind = ["/x"]`), `4:9: container "a": bind[0] = "/x": want a table, like { source = "/srv/data", writable = true }`},
		{"bind writable", daemon("a", `bind = [{ source = "/x", writable = "yes" }]`), `4:37: container "a": bind[0].writable = "yes": want true or false`},
		{"memory int", daemon("a", `memory = 512`), `4:10: container "a": memory = 512: want a size as a string, like "512M" or "2G" (K, M, G, T: binary units; no unit: bytes)`},
		{"memory unit", daemon("a", `memory = "2GB"`), `4:10: container "a": memory = "2GB": want a whole number of bytes with an optional unit K, M, G or T (binary: 1K = 1024), like "512M" or "2G"`},
		{"memory fraction", daemon("a", `memory_high = "1.5G"`), `4:15: container "a": memory_high = "1.5G": want a whole number of bytes`},
		{"memory huge", daemon("a", `memory = "8388608T"`), `4:10: container "a": memory = "8388608T": too large; at most 8388607T`},
		{"pids type", daemon("a", `pids = "4096"`), `4:8: container "a": pids = "4096": want a whole number, like 4096`},
		{"cpu type", daemon("a", `cpu = "0.5"`), `4:7: container "a": cpu = "0.5": want a number of CPUs, like 0.5 or 2`},
		{"sandbox type", user("a", `protect_proc = 1`), `3:16: container "a": protect_proc = 1: want true or false`},
		{"level type", user("a", `level = "1"`), `3:9: container "a": level = "1": want a sandbox level, one of 1`},
		{"start_limit", user("a", `start_limit = 0`), `3:15: container "a": start_limit = 0: want a whole number from 1 to 1000`},
		{"stop_timeout", user("a", `stop_timeout = "10"`), `3:16: container "a": stop_timeout = "10": want a duration like "10s", "1m30s" or "500ms"`},

		// Unknown keys, at every depth.
		{"unknown key", user("a", `escalation = "key"`), `3:1: container "a": unknown key "escalation": want one of kind, rootfs, bind, memory, memory_high, pids, cpu, restart, after, hostname, network, address, nat, publish, dns, exec, env, dir, user, stop_timeout, start_limit, private_users, private_tmp, private_devices, protect_proc, protect_sys, no_new_privileges, nesting, level, escalate, keys, keys_file, as, commands, password_hash, service, container`},
		{"unknown bind key", daemon("a", "[[container.a.bind]]", `source = "/x"`, `ro = true`), `6:1: container "a": bind[0]: unknown key "ro": want one of source, target, writable`},
		{"unknown grandchild key", user("a", "[container.a.container.b]", "kind = \"user\"", "bogus = []"), `5:1: container "a/b": unknown key "bogus": want one of kind`},
		{"unknown child service key", user("a", "[[container.a.service]]", `name = "s"`, `exec = ["/s"]`, `kind = "x"`), `6:1: service "a/s": unknown key "kind": want one of name, exec`},

		// Names and kinds.
		{"name upper", user("Alice"), `1:12: container "Alice": want a name of a-z, 0-9 and '-', starting with a letter or digit, at most 32 characters`},
		{"name long", user(strings.Repeat("a", 33)), `1:12: container "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa": want a name of a-z`},
		{"name quoted", "[container.\"a b\"]\nkind = \"daemon\"\nexec = [\"/x\"]", `1:12: container "a b": want a name of a-z`},
		{"kind missing", "[container.a]\nrootfs = \"host\"", `1:12: container "a": kind is missing: want kind = "user" (a person's machine) or kind = "daemon" (one service)`},
		{"kind missing inline", `container = { a = {} }`, `1:15: container "a": kind is missing`},
		{"kind bad", "[container.a]\nkind = \"vm\"", `2:8: container "a": kind = "vm": want "user" or "daemon"`},

		// Paths.
		{"rootfs relative", user("a", `rootfs = "srv/a"`), `3:10: container "a": rootfs = "srv/a": want "host" or an absolute path to a directory`},
		{"rootfs unclean", user("a", `rootfs = "/srv/a/"`), `3:10: container "a": rootfs = "/srv/a/": want a clean path: "/srv/a"`},
		{"rootfs slash", user("a", `rootfs = "/"`), `3:10: container "a": rootfs = "/": want "host" for the parent's root, or another directory`},
		{"rootfs image", user("a", `rootfs = "debian.tar"`), `3:10: container "a": rootfs = "debian.tar": want "host" or an absolute path to a directory`},
		{"bind source missing", daemon("a", `bind = [{ target = "/x" }]`), `4:9: container "a": bind[0]: source is missing: want an absolute path, like "/srv/data"`},
		{"bind source relative", daemon("a", `bind = [{ source = "data" }]`), `4:20: container "a": bind[0].source = "data": want an absolute path`},
		{"bind source unclean", daemon("a", `bind = [{ source = "/data//x" }]`), `4:20: container "a": bind[0].source = "/data//x": want a clean path: "/data/x"`},
		{"bind target outside", daemon("a", `bind = [{ source = "/data", target = "/../etc" }]`), `4:38: container "a": bind[0].target = "/../etc": outside the container's root; want an absolute path without "..", like "/srv/data"`},
		{"bind target dotdot", daemon("a", `bind = [{ source = "/data", target = "/srv/../../etc" }]`), `4:38: container "a": bind[0].target = "/srv/../../etc": outside the container's root`},
		{"bind target root", daemon("a", "[[container.a.bind]]", `source = "/srv"`, `target = "/"`), `6:10: container "a": bind[0].target = "/": want a directory below /; to give the container another root, set rootfs`},
		{"bind target relative", daemon("a", `bind = [{ source = "/data", target = "data" }]`), `4:38: container "a": bind[0].target = "data": want an absolute path`},
		{"bind target unclean", daemon("a", `bind = [{ source = "/data", target = "/d/./x" }]`), `4:38: container "a": bind[0].target = "/d/./x": want a clean path: "/d/x"`},
		{"bind target twice", daemon("a", `bind = [{ source = "/a", target = "/x" },`, `  { source = "/b", target = "/x" }]`), `5:29: container "a": bind[1].target = "/x": already the target of bind[0]`},

		// Limits.
		{"memory_high above memory", daemon("a", `memory = "1G"`, `memory_high = "1025M"`), `5:15: container "a": memory_high = "1025M" is above memory = "1G": the hard limit would be hit first; lower memory_high or raise memory`},
		{"pids negative", daemon("a", `pids = -1`), `4:8: container "a": pids = -1: want a whole number from 1 to 4194304, or 0 for no limit`},
		{"pids huge", daemon("a", `pids = 4194305`), `4:8: container "a": pids = 4194305: want a whole number from 1 to 4194304, or 0 for no limit`},
		{"cpu small", daemon("a", `cpu = 0.001`), `4:7: container "a": cpu = 0.001: want a number of CPUs from 0.01 to 1024, like 0.5 or 2, or 0 for no limit`},
		{"cpu negative", daemon("a", `cpu = -1`), `4:7: container "a": cpu = -1: want a number of CPUs from 0.01 to 1024`},
		{"cpu many", daemon("a", `cpu = 1025`), `4:7: container "a": cpu = 1025: want a number of CPUs from 0.01 to 1024`},
		{"cpu nan", daemon("a", `cpu = nan`), `4:7: container "a": cpu = nan: want a number of CPUs from 0.01 to 1024`},
		{"cpu inf", daemon("a", `cpu = inf`), `4:7: container "a": cpu = inf: want a number of CPUs from 0.01 to 1024`},

		// Other values.
		{"restart", user("a", `restart = "never"`), `3:11: container "a": restart = "never": want "always", "on-failure" or "no"`},
		{"hostname", user("a", `hostname = "a_b"`), `3:12: container "a": hostname = "a_b": want letters, digits, '-' and '.', at most 64 characters, no part starting or ending with '-'`},
		{"hostname empty", user("a", `hostname = ""`), `3:12: container "a": hostname = "": want letters, digits`},
		{"hostname from name", user("a-"), `1:12: container "a-": its name is no host name (a host name does not end with '-'); set hostname`},
		{"network bad", daemon("a", `network = "bridge"`), `4:11: container "a": network = "bridge": want "none" (only lo), "host" (the parent's network) or "veth" (its own address on the parent's bridge)`},
		{"level", user("a", `level = 2`), `3:9: container "a": level = 2: unknown sandbox level; want one of the known levels: 1`},
		{"level zero", user("a", `level = 0`), `3:9: container "a": level = 0: unknown sandbox level; want one of the known levels: 1`},
		{"stop_timeout long", user("a", `stop_timeout = "2h"`), `3:16: container "a": stop_timeout = "2h": want a duration above 0 and at most 1h`},

		// Networks.
		{"address form", daemon("a", `network = "veth"`, `address = "10.88.0"`), `5:11: container "a": address = "10.88.0": want an IPv4 address, like "10.88.0.7"`},
		{"address v6", daemon("a", `network = "veth"`, `address = "fd00::7"`), `5:11: container "a": address = "fd00::7": want an IPv4 address`},
		{"address gateway", daemon("a", `network = "veth"`, `address = "10.88.0.1"`), `5:11: container "a": address = "10.88.0.1": the parent's bridge has .1 of its /24; pick another`},
		{"address broadcast", daemon("a", `network = "veth"`, `address = "10.88.0.255"`), `5:11: container "a": address = "10.88.0.255": the network or broadcast address of its /24`},
		{"address outside", daemon("a", `network = "veth"`, `address = "10.89.0.5"`), `5:11: container "a": address = "10.89.0.5": outside this init's bridge 10.88.0.0/24; pick an address in it`},
		{"address outside subnet", "subnet = \"10.77.0.0/16\"\n" + daemon("a", `network = "veth"`, `address = "10.88.0.5"`), `6:11: container "a": address = "10.88.0.5": outside this init's bridge 10.77.0.0/24`},
		{"address twice", daemon("a", `network = "veth"`, `address = "10.88.0.5"`) + daemon("b", `network = "veth"`, `address = "10.88.0.5"`), `10:11: container "b": address = "10.88.0.5": already the address of container "a"`},
		{"address without veth", daemon("a", `address = "10.88.0.5"`), `4:1: container "a": address: only a container with network = "veth" has it; set network = "veth", or leave address out`},
		{"nat without veth", daemon("a", `network = "host"`, `nat = true`), `5:1: container "a": nat: only a container with network = "veth" has it`},
		{"nat type", daemon("a", `network = "veth"`, `nat = "yes"`), `5:7: container "a": nat = "yes": want true or false`},
		{"publish form", daemon("a", `network = "veth"`, `publish = ["8080"]`), `5:12: container "a": publish[0] = "8080": want "HOST:CONTAINER" or "HOST:CONTAINER/udp", ports 1 to 65535, like "8080:80" or "5353:53/udp"`},
		{"publish proto", daemon("a", `network = "veth"`, `publish = ["80:80", "53:53/sctp"]`), `5:21: container "a": publish[1] = "53:53/sctp": want "HOST:CONTAINER"`},
		{"publish zero", daemon("a", `network = "veth"`, `publish = ["0:80"]`), `5:12: container "a": publish[0] = "0:80": want`},
		{"publish big", daemon("a", `network = "veth"`, `publish = ["65536:80"]`), `5:12: container "a": publish[0] = "65536:80": want`},
		{"publish type", daemon("a", `network = "veth"`, `publish = [8080]`), `5:12: container "a": publish[0] = 8080: want a string`},
		{"publish twice", daemon("a", `network = "veth"`, `publish = ["80:80", "80:8080/tcp"]`), `5:21: container "a": publish[1] = "80:8080/tcp": port 80/tcp is already published by publish[0]`},
		{"publish taken", daemon("a", `network = "veth"`, `publish = ["80:80"]`) + daemon("b", `network = "veth"`, `publish = ["53:53/udp", "80:80"]`), `10:25: container "b": publish[1] = "80:80/tcp": port 80/tcp is already published by container "a"`},
		{"publish without veth", daemon("a", `publish = ["80:80"]`), `4:1: container "a": publish: only a container with network = "veth" has it`},
		{"dns form", daemon("a", `network = "veth"`, `dns = ["1.1.1"]`), `5:8: container "a": dns[0] = "1.1.1": want the IP address of a nameserver, like "192.0.2.53"`},
		{"dns many", daemon("a", `network = "veth"`, `dns = ["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4"]`), `5:47: container "a": dns: 4 nameservers; the resolver reads at most 3`},
		{"dns without veth", daemon("a", `dns = []`), `4:1: container "a": dns: only a container with network = "veth" has it`},
		{"veth below none", user("a", "[container.a.container.b]", `kind = "daemon"`, `exec = ["/b"]`, `network = "veth"`), `6:11: container "a/b": network = "veth" needs a bridge in "a", which has network = "none"; set network = "veth" on "a"`},

		// What each kind has.
		{"daemon exec missing", "[container.a]\nkind = \"daemon\"", `1:12: container "a": exec is missing or empty: want the program and its arguments, like ["/usr/sbin/httpd", "-f"]`},
		{"daemon exec relative", "[container.a]\nkind = \"daemon\"\nexec = [\"nginx\"]", `3:9: container "a": exec[0] = "nginx": want an absolute path`},
		{"daemon dir", daemon("a", `dir = "srv"`), `4:7: container "a": dir = "srv": want an absolute path`},
		{"daemon env", daemon("a", `env = { "" = "x" }`), `4:9: container "a": env."": want an environment variable name: not empty, without '=' or NUL`},
		{"daemon user", daemon("a", `user = "a"`), `4:1: container "a": user: only a user container has a user; leave it out, or set kind = "user"`},
		{"daemon services", daemon("a", "[[container.a.service]]", `name = "s"`, `exec = ["/s"]`), `4:15: container "a": service: a daemon container runs only its exec; give these services a container of their own, or set kind = "user"`},
		{"daemon children", daemon("a", "[container.a.container.b]", `kind = "user"`), `4:14: container "a": container: a daemon container has no containers of its own; set kind = "user"`},
		{"user exec", user("a", `exec = ["/bin/sh"]`), `3:1: container "a": exec: only a daemon container has exec; give a user container services instead, or set kind = "daemon"`},
		{"user env", user("a", "[container.a.env]", `A = "1"`), `3:14: container "a": env: only a daemon container has env; give a user container services instead, or set kind = "daemon"`},
		{"user dir", user("a", `dir = "/"`), `3:1: container "a": dir: only a daemon container has dir`},
		{"user name", user("a", `user = "Al"`), `3:8: container "a": user = "Al": want a-z, 0-9 and '-', starting with a letter or digit, at most 32 characters`},
		{"user empty", user("a", `user = ""`), `3:8: container "a": user = "": want a-z`},
		{"nesting off with children", user("a", "nesting = false", "[container.a.container.b]", `kind = "user"`), `3:11: container "a": nesting = false: its containers need nesting = true`},

		// One set of names per init.
		{"service then container", svc("web") + daemon("web"), `5:12: container "web": already used by the service at line 2 (services and containers share one set of names); rename or remove one of them`},
		{"container then service", daemon("web") + svc("web"), `6:8: service "web": name = "web": already used by the container at line 1 (services and containers share one set of names); rename or remove one of them`},
		{"console container", user("console"), `1:12: container "console": taken by the console shell (console = "shell"); pick another name or set console = "none"`},
		{"child names", user("a", "[[container.a.service]]", `name = "b"`, `exec = ["/b"]`, "[container.a.container.b]", `kind = "user"`),
			`6:24: container "a/b": already used by the service at line 4 (services and containers share one set of names); rename or remove one of them`},
		{"child console", user("a", "[[container.a.service]]", `name = "console"`, `exec = ["/b"]`), `4:8: service "a/console": name = "console": reserved for the console shell of the init inside "a"; pick another name`},
		{"child service name", user("a", "[[container.a.service]]", `name = "S"`, `exec = ["/b"]`), `4:8: service "a/S": name = "S": want a-z`},
		{"child service nameless", user("a", "[[container.a.service]]", `exec = ["/b"]`), `3:15: container "a": service[0]: name is missing`},
		{"grandchild", user("a", "[container.a.container.b]", `kind = "user"`, "[container.a.container.b.container.c]", `kind = "daemon"`),
			`5:36: container "a/b/c": exec is missing or empty`},

		// after.
		{"after unknown", user("a", `after = ["db"]`), `3:10: container "a": after[0] = "db": no service or container has that name; there is no other service or container`},
		{"after self", user("a", `after = ["a"]`), `3:10: container "a": after[0] = "a": a container cannot come after itself`},
		{"after twice", user("a", `after = ["b", "b"]`) + user("b"), `3:15: container "a": after[1] = "b": listed twice`},
		{"after parent's unit", svc("db") + user("a", "[container.a.container.b]", `kind = "user"`, `after = ["db"]`),
			`9:10: container "a/b": after[0] = "db": no service or container has that name; there is no other service or container`},
		{"cycle service container", svc("db", `after = ["web"]`) + daemon("web", `after = ["db"]`),
			`8:10: container "web": after[0] = "db": dependency cycle: web after db after web`},
		{"cycle containers", user("a", `after = ["b"]`) + user("b", `after = ["a"]`), `6:10: container "b": after[0] = "a": dependency cycle: b after a after b`},
		{"cycle in a child", user("a", "[[container.a.service]]", `name = "s"`, `exec = ["/s"]`, `after = ["b"]`, "[container.a.container.b]", `kind = "user"`, `after = ["s"]`),
			`9:10: container "a/b": after[0] = "s": dependency cycle: b after s after b`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse("t.toml", []byte(tt.doc))
			want := "t.toml:" + tt.want
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want error %q", tt.doc, c, want)
			}
			if got := err.Error(); !strings.HasPrefix(got, want) {
				t.Errorf("Parse(%q) =\n%s\nwant\n%s…", tt.doc, got, want)
			}
			var e *Error
			if !errors.As(err, &e) || e.File != "t.toml" || e.Line == 0 || e.Col == 0 {
				t.Errorf("Parse(%q) = %#v, want one *Error with a position", tt.doc, err)
			}
		})
	}
}

func TestParseContainer(t *testing.T) {
	doc := "kind = \"daemon\"\nexec = [\"/usr/sbin/nginx\"]\nbind = [{ source = \"/srv/www\" }]\n"
	c, err := ParseContainer("web", "/d/web.toml", []byte(doc))
	if err != nil {
		t.Fatalf("ParseContainer(web) = %v", err)
	}
	stripContainer(c)
	want := &Container{Name: "web", Kind: KindDaemon, Rootfs: RootfsHost, Binds: []Bind{{Source: "/srv/www", Target: "/srv/www"}},
		Restart: RestartOnFailure, Hostname: "web", Network: NetworkNone, Exec: []string{"/usr/sbin/nginx"},
		StopTimeout: DefaultStopTimeout, StartLimit: DefaultStartLimit, Sandbox: daemonSandbox, File: "/d/web.toml"}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("ParseContainer(web) =\n%+v\nwant\n%+v", c, want)
	}

	tests := []struct{ name, doc, want string }{
		{"Web", "kind = \"user\"", `/d/Web.toml: container "Web": the file name is the container's name: want a-z, 0-9 and '-', starting with a letter or digit, at most 32 characters, then .toml; rename the file`},
		{"", "kind = \"user\"", `/d/.toml: container "": the file name is the container's name`},
		{"x", "kind = \"user\"\nkind = \"user\"", `/d/x.toml:2:1: key kind is already defined`},
		{"x", "\nkind = \"vm\"", `/d/x.toml:2:8: container "x": kind = "vm": want "user" or "daemon"`},
		{"x", "rootfs = \"host\"", `/d/x.toml: container "x": kind is missing`},
		{"x", "kind = \"user\"\n[[service]]\nname = \"s\"\nexec = [\"s\"]", `/d/x.toml:4:9: service "x/s": exec[0] = "s": want an absolute path`},
		{"x", "kind = \"user\"\n[container.y]\nkind = \"user\"\nmounts = 1", `/d/x.toml:4:1: container "x/y": unknown key "mounts"`},
		{"x", "kind = \"daemon\"\nexec = [\"/x\"]\n[container.y]\nkind = \"user\"", `/d/x.toml:3:2: container "x": container: a daemon container has no containers of its own`},
		{"x", "kind = \"daemon\"\nexec = [\"/x\"]\n[[bind]]\nsource = \"/srv\"\ntarget = \"/\"", `/d/x.toml:5:10: container "x": bind[0].target = "/": want a directory below /`},
		{"x", "kind = \"user\"\n[[service]]\nname = \"s\"\nexec = [\"/s\"]\n[container.s]\nkind = \"user\"", `/d/x.toml:5:12: container "x/s": already used by the service at line 3`},
	}
	for _, tt := range tests {
		_, err := ParseContainer(tt.name, "/d/"+tt.name+".toml", []byte(tt.doc))
		if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
			t.Errorf("ParseContainer(%q, %q) = %v, want %q…", tt.name, tt.doc, err, tt.want)
		}
	}
}

// writeFiles writes name -> content into dir.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestLoadDir(t *testing.T) {
	const nest = "[[service]]\nname = \"db\"\nexec = [\"/db\"]\n\n[container.alice]\nkind = \"user\"\n"
	parse := func(t *testing.T) *Config {
		c, err := Parse("/etc/nest/nest.toml", []byte(nest))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	t.Run("missing dir", func(t *testing.T) {
		c := parse(t)
		if err := LoadDir(c, filepath.Join(t.TempDir(), "containers.d")); err != nil || len(c.Containers) != 1 {
			t.Errorf("LoadDir(missing) = %v, %d containers, want nil, 1", err, len(c.Containers))
		}
	})

	t.Run("files", func(t *testing.T) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string]string{
			"web.toml":      "kind = \"daemon\"\nexec = [\"/web\"]\nafter = [\"db\", \"api\", \"alice\"]\n",
			"api.toml":      "kind = \"daemon\"\nexec = [\"/api\"]\n[env]\nPORT = \"80\"\n",
			"README":        "not a container",
			"web.toml~":     "kind = 1",
			"bob.toml.dpkg": "kind = 1",
			"dev-1.toml":    "kind = \"user\"\n[[service]]\nname = \"sshd\"\nexec = [\"/sshd\"]\n",
		})
		if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		c := parse(t)
		if err := LoadDir(c, dir); err != nil {
			t.Fatalf("LoadDir = %v", err)
		}
		var names, files []string
		for _, ct := range c.Containers {
			names = append(names, ct.Name)
			files = append(files, ct.File)
		}
		wantFiles := []string{"/etc/nest/nest.toml", filepath.Join(dir, "api.toml"), filepath.Join(dir, "dev-1.toml"), filepath.Join(dir, "web.toml")}
		if want := []string{"alice", "api", "dev-1", "web"}; !reflect.DeepEqual(names, want) || !reflect.DeepEqual(files, wantFiles) {
			t.Errorf("LoadDir: containers %q from %q, want %q from %q", names, files, want, wantFiles)
		}
		web, ok := c.Container("web")
		if !ok || !reflect.DeepEqual(web.After, []string{"db", "api", "alice"}) || web.Sandbox != daemonSandbox {
			t.Errorf("Container(web) = %+v, %v", web, ok)
		}
		if dev, _ := c.Container("dev-1"); len(dev.Services) != 1 || dev.User != "dev-1" {
			t.Errorf("Container(dev-1) = %+v, want one service and user dev-1", dev)
		}
		if err := c.Validate(); err != nil {
			t.Errorf("Validate after LoadDir = %v", err)
		}
	})

	tests := []struct {
		name  string
		files map[string]string
		want  string // "DIR" is the directory
	}{
		{"bad name", map[string]string{"Web.toml": "kind = \"user\"", "ok.toml": "kind = \"user\""},
			`DIR/Web.toml: container "Web": the file name is the container's name: want a-z, 0-9 and '-', starting with a letter or digit, at most 32 characters, then .toml; rename the file`},
		{"long name", map[string]string{strings.Repeat("x", 33) + ".toml": "kind = \"user\""}, `DIR/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.toml: container "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx": the file name`},
		{"hidden", map[string]string{".x.toml": "kind = \"user\""}, `DIR/.x.toml: container ".x": the file name`},
		{"duplicate container", map[string]string{"alice.toml": "kind = \"user\""},
			`DIR/alice.toml: container "alice": already used by the container at /etc/nest/nest.toml:5:12; rename or remove one of them`},
		{"duplicate service", map[string]string{"db.toml": "kind = \"daemon\"\nexec = [\"/db\"]"},
			`DIR/db.toml: container "db": already used by the service at /etc/nest/nest.toml:2:8 (services and containers share one set of names); rename or remove one of them`},
		{"console", map[string]string{"console.toml": "kind = \"user\""},
			`DIR/console.toml: container "console": taken by the console shell (console = "shell"); pick another name or set console = "none"`},
		{"position", map[string]string{"web.toml": "# web\nkind = \"daemon\"\nexec = [\"/web\"]\nmemory = \"1X\""},
			`DIR/web.toml:4:10: container "web": memory = "1X": want a whole number of bytes`},
		{"syntax", map[string]string{"web.toml": "kind = \"daemon"}, `DIR/web.toml:1:14: unterminated basic string`},
		{"after unknown", map[string]string{"web.toml": "kind = \"daemon\"\nexec = [\"/web\"]\nafter = [\"db\", \"dbx\"]"},
			`DIR/web.toml:3:16: container "web": after[1] = "dbx": no service or container has that name; want one of "alice", "db"`},
		{"cycle", map[string]string{"a.toml": "kind = \"user\"\nafter = [\"b\"]", "b.toml": "kind = \"user\"\nafter = [\"a\"]"},
			`DIR/b.toml:2:10: container "b": after[0] = "a": dependency cycle: b after a after b`},
		{"two files", map[string]string{"a.toml": "kind = \"vm\"", "b.toml": "kind = \"user\"\nkind = 2"},
			"DIR/a.toml:1:8: container \"a\": kind = \"vm\": want \"user\" or \"daemon\"\nDIR/b.toml:2:1: key kind is already defined"},
		{"two files, one check", map[string]string{"a.toml": "kind = \"user\"\nafter = [\"x\"]", "b.toml": "kind = \"user\"\nafter = [\"y\"]"},
			"DIR/a.toml:2:10: container \"a\": after[0] = \"x\": no service or container has that name; want one of \"alice\", \"b\", \"db\"\n" +
				"DIR/b.toml:2:10: container \"b\": after[0] = \"y\": no service or container has that name; want one of \"a\", \"alice\", \"db\""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFiles(t, dir, tt.files)
			c := parse(t)
			err := LoadDir(c, dir)
			want := strings.ReplaceAll(tt.want, "DIR", dir)
			if err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Errorf("LoadDir(%v) =\n%v\nwant\n%s…", tt.files, err, want)
			}
			if len(c.Containers) != 1 {
				t.Errorf("LoadDir(%v) failed but left %d containers, want the 1 of nest.toml", tt.files, len(c.Containers))
			}
		})
	}

	t.Run("network", func(t *testing.T) {
		dir := t.TempDir()
		writeFiles(t, dir, map[string]string{"web.toml": "kind = \"daemon\"\nexec = [\"/web\"]\nnetwork = \"veth\"\npublish = [\"22:22\"]\naddress = \"10.77.0.9\""})
		c, err := Parse("/etc/nest/nest.toml", []byte("subnet = \"10.77.0.0/16\"\n[container.ssh]\nkind = \"daemon\"\nexec = [\"/ssh\"]\nnetwork = \"veth\"\npublish = [\"22:22\"]\n"))
		if err != nil {
			t.Fatal(err)
		}
		err = LoadDir(c, dir)
		want := dir + `/web.toml:4:12: container "web": publish[0] = "22:22/tcp": port 22/tcp is already published by container "ssh"`
		if err == nil || err.Error() != want {
			t.Errorf("LoadDir(a port nest.toml publishes) =\n%v\nwant\n%s", err, want)
		}
	})

	t.Run("unreadable", func(t *testing.T) {
		dir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dir, "x.toml"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := LoadDir(parse(t), dir); err == nil || !strings.Contains(err.Error(), "x.toml") {
			t.Errorf("LoadDir(a directory named x.toml) = %v, want an error naming it", err)
		}
	})
}

func TestCheckPaths(t *testing.T) {
	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	file := filepath.Join(dir, "file")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, map[string]string{"file": ""})
	missing := filepath.Join(dir, "missing")

	doc := fmt.Sprintf(`[container.ok]
kind   = "user"
rootfs = %q

[container.web]
kind   = "daemon"
exec   = ["/web"]
[[container.web.bind]]
source   = %q
writable = true
[[container.web.bind]]
target = "/x"
source = %q

[container.img]
kind   = "user"
rootfs = %q

[container.gone]
kind   = "user"
rootfs = %q

[container.gone.container.child]
kind = "daemon"
exec = ["/c"]
rootfs = %q
[[container.gone.container.child.bind]]
source = %q
`, root, file, missing, file, missing, missing, missing)
	c, err := Parse("t.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, want string }{
		{"ok", ""},
		{"web", fmt.Sprintf(`t.toml:13:10: container "web": bind[1].source = %q: does not exist; create it, or remove this bind`, missing)},
		{"img", fmt.Sprintf(`t.toml:17:10: container "img": rootfs = %q: not a directory (images are not supported yet); give a directory, or "host"`, file)},
		// Its child's paths are left to its own init.
		{"gone", fmt.Sprintf(`t.toml:21:10: container "gone": rootfs = %q: no such directory; create it, or set rootfs = "host"`, missing)},
	}
	for _, tt := range tests {
		ct, _ := c.Container(tt.name)
		got := ""
		if err := ct.CheckPaths(); err != nil {
			got = err.Error()
		}
		if got != tt.want {
			t.Errorf("Container(%s).CheckPaths() = %q, want %q", tt.name, got, tt.want)
		}
	}

	gone, _ := c.Container("gone")
	want := fmt.Sprintf(`t.toml:26:10: container "gone/child": rootfs = %q: no such directory; create it, or set rootfs = "host"`+"\n"+
		`t.toml:28:10: container "gone/child": bind[0].source = %q: does not exist; create it, or remove this bind`, missing, missing)
	if err := gone.Containers[0].CheckPaths(); err == nil || err.Error() != want {
		t.Errorf("the child's CheckPaths() = %v, want\n%s", err, want)
	}

	// Built by hand (or sent over the link): no position, but the name.
	hand := Container{Name: "h", Kind: KindUser, Rootfs: missing, File: "nest.toml"}
	if err, want := hand.CheckPaths(), fmt.Sprintf(`nest.toml: container "h": rootfs = %q: no such directory`, missing); err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("CheckPaths(by hand) = %v, want %q…", err, want)
	}

	// From containers.d: placed in its own file.
	d := t.TempDir()
	writeFiles(t, d, map[string]string{"x.toml": fmt.Sprintf("kind = \"daemon\"\nexec = [\"/x\"]\n\n[[bind]]\nsource = %q\n", missing)})
	cfg := &Config{Source: "nest.toml", Console: ConsoleShell}
	if err := LoadDir(cfg, d); err != nil {
		t.Fatal(err)
	}
	want = fmt.Sprintf(`%s:5:10: container "x": bind[0].source = %q: does not exist`, filepath.Join(d, "x.toml"), missing)
	if err := cfg.Containers[0].CheckPaths(); err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("CheckPaths(containers.d) = %v, want %q…", err, want)
	}
}

func TestContainerEqual(t *testing.T) {
	c, err := Parse("t.toml", []byte(fullContainers))
	if err != nil {
		t.Fatal(err)
	}
	again, _ := Parse("other.toml", []byte(fullContainers))
	for i := range c.Containers {
		if !c.Containers[i].Equal(again.Containers[i]) {
			t.Errorf("Equal(%s, the same parsed from another file) = false, want true", c.Containers[i].Name)
		}
	}
	base := c.Containers[1] // web
	alice := c.Containers[0]
	change := func(f func(*Container)) Container {
		o, _ := Parse("t.toml", []byte(fullContainers))
		w := o.Containers[1]
		f(&w)
		return w
	}
	changeAlice := func(f func(*Container)) Container {
		o, _ := Parse("t.toml", []byte(fullContainers))
		a := o.Containers[0]
		f(&a)
		return a
	}
	tests := []struct {
		name string
		a, b Container
		want bool
	}{
		{"same", base, change(func(*Container) {}), true},
		{"file", base, change(func(c *Container) { c.File = "/etc/nest/containers.d/web.toml" }), true},
		{"empty env", Container{Env: map[string]string{}}, Container{}, true},
		{"name", base, change(func(c *Container) { c.Name = "www" }), false},
		{"kind", base, change(func(c *Container) { c.Kind = KindUser }), false},
		{"rootfs", base, change(func(c *Container) { c.Rootfs = "/srv" }), false},
		{"bind writable", base, change(func(c *Container) { c.Binds[0].Writable = false }), false},
		{"bind order", base, change(func(c *Container) { c.Binds[0], c.Binds[1] = c.Binds[1], c.Binds[0] }), false},
		{"memory", base, change(func(c *Container) { c.Memory++ }), false},
		{"memory_high", base, change(func(c *Container) { c.MemoryHigh = 0 }), false},
		{"pids", base, change(func(c *Container) { c.Pids = 0 }), false},
		{"cpu", base, change(func(c *Container) { c.CPU = 1 }), false},
		{"restart", base, change(func(c *Container) { c.Restart = RestartNo }), false},
		{"after", base, change(func(c *Container) { c.After = []string{"db", "alice"} }), false},
		{"hostname", base, change(func(c *Container) { c.Hostname = "web" }), false},
		{"network", base, change(func(c *Container) { c.Network = NetworkNone }), false},
		{"address", base, change(func(c *Container) { c.Address = netip.MustParseAddr("10.88.0.9") }), false},
		{"nat", base, change(func(c *Container) { c.NAT = true }), false},
		{"publish", base, change(func(c *Container) { c.Publish = []Publish{{80, 80, "tcp"}} }), false},
		{"dns", base, change(func(c *Container) { c.DNS = []netip.Addr{netip.MustParseAddr("192.0.2.53")} }), false},
		{"exec", base, change(func(c *Container) { c.Exec[2] = "daemon on;" }), false},
		{"env", base, change(func(c *Container) { c.Env["PORT"] = "8080" }), false},
		{"dir", base, change(func(c *Container) { c.Dir = "/" }), false},
		{"user", alice, changeAlice(func(c *Container) { c.User = "al" }), false},
		{"stop_timeout", base, change(func(c *Container) { c.StopTimeout = time.Second }), false},
		{"start_limit", base, change(func(c *Container) { c.StartLimit = 4 }), false},
		{"sandbox", base, change(func(c *Container) { c.Sandbox.ProtectSys = false }), false},
		{"level", base, change(func(c *Container) { c.Sandbox.Level = 2 }), false},
		{"service", alice, changeAlice(func(c *Container) { c.Services[0].Exec = []string{"/sshd"} }), false},
		{"services order", Container{Services: []Service{{Name: "a"}, {Name: "b"}}}, Container{Services: []Service{{Name: "b"}, {Name: "a"}}}, true},
		{"service gone", alice, changeAlice(func(c *Container) { c.Services = nil }), false},
		{"grandchild", alice, changeAlice(func(c *Container) { c.Containers[0].Rootfs = "/srv/dev2" }), false},
		{"grandchild file", alice, changeAlice(func(c *Container) { c.Containers[0].File = "x" }), true},
		{"children order", Container{Containers: []Container{{Name: "a"}, {Name: "b"}}}, Container{Containers: []Container{{Name: "b"}, {Name: "a"}}}, true},
		{"children", Container{Containers: []Container{{Name: "a"}}}, Container{Containers: []Container{{Name: "b"}}}, false},
	}
	for _, tt := range tests {
		if got := tt.a.Equal(tt.b); got != tt.want {
			t.Errorf("Equal(%s) = %v, want %v", tt.name, got, tt.want)
		}
		if got := tt.b.Equal(tt.a); got != tt.want {
			t.Errorf("Equal(%s), swapped = %v, want %v", tt.name, got, tt.want)
		}
	}
	if base.Exec[2] != "daemon off;" || len(alice.Services) != 1 {
		t.Fatal("change modified the base")
	}
}

func TestConfigContainer(t *testing.T) {
	c, err := Parse("t.toml", []byte(fullContainers))
	if err != nil {
		t.Fatal(err)
	}
	if ct, ok := c.Container("web"); !ok || ct != &c.Containers[1] {
		t.Errorf("Container(web) = %v, %v, want &c.Containers[1], true", ct, ok)
	}
	if ct, ok := c.Container("dev"); ok || ct != nil {
		t.Errorf("Container(dev) = %v, %v, want nil, false: a grandchild is not the init's", ct, ok)
	}
}

func TestDefaultSandbox(t *testing.T) {
	if s, ok := DefaultSandbox(KindUser, 1); !ok || s != userSandbox {
		t.Errorf("DefaultSandbox(user, 1) = %+v, %v", s, ok)
	}
	if s, ok := DefaultSandbox(KindDaemon, SandboxLevel); !ok || s != daemonSandbox {
		t.Errorf("DefaultSandbox(daemon, newest) = %+v, %v", s, ok)
	}
	if _, ok := DefaultSandbox(KindUser, 2); ok {
		t.Errorf("DefaultSandbox(user, 2) = ok, want false")
	}
}

func TestValidateContainers(t *testing.T) {
	ok := Container{Name: "a", Kind: KindDaemon, Rootfs: RootfsHost, Exec: []string{"/a"}, Restart: RestartNo, Hostname: "a",
		Network: NetworkNone, StopTimeout: time.Second, StartLimit: 1, Sandbox: daemonSandbox}
	c := Config{Source: "x", Console: ConsoleNone, Containers: []Container{ok}}
	if err := c.Validate(); err != nil {
		t.Errorf("Validate(a valid container) = %v", err)
	}
	c.Containers = []Container{{Name: "b", Kind: KindUser, MemoryHigh: -1}}
	want := `x: container "b": rootfs = "": want "host" or an absolute path to a directory` + "\n" +
		`x: container "b": memory_high = -1: want a size of 0 (no limit) or more` + "\n" +
		`x: container "b": restart = "": want "always", "on-failure" or "no"` + "\n" +
		`x: container "b": hostname = "": want letters, digits, '-' and '.', at most 64 characters, no part starting or ending with '-'` + "\n" +
		`x: container "b": network = "": want "none" (only lo), "host" (the parent's network) or "veth" (its own address on the parent's bridge)` + "\n" +
		`x: container "b": user = "": want a-z, 0-9 and '-', starting with a letter or digit, at most 32 characters` + "\n" +
		`x: container "b": stop_timeout = "0s": want a duration above 0 and at most 1h` + "\n" +
		`x: container "b": start_limit = 0: want a whole number from 1 to 1000` + "\n" +
		`x: container "b": level = 0: unknown sandbox level; want one of the known levels: 1`
	if err := c.Validate(); err == nil || err.Error() != want {
		t.Errorf("Validate(a zero user container) =\n%v\nwant\n%s", err, want)
	}
	c.Containers = []Container{ok, ok}
	if err, want := c.Validate(), `x: container "a": already used by container[0]; rename or remove one of them`; err == nil || err.Error() != want {
		t.Errorf("Validate(two containers a) = %v, want %q", err, want)
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]int64{"0": 0, "100": 100, "1024K": 1 << 20, "1k": 1024, "512M": 512 << 20, "2G": 2 << 30, "2g": 2 << 30,
		"1T": 1 << 40, "9223372036854775807": math.MaxInt64, "8388607T": 8388607 << 40}
	for in, want := range good {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v, want %d", in, got, err, want)
		}
		if n := want; n > 0 {
			if back, _ := parseSize(formatSize(n)); back != n {
				t.Errorf("parseSize(formatSize(%d) = %q) = %d", n, formatSize(n), back)
			}
		}
	}
	for _, in := range []string{"", "M", "1.5G", "-1", "+1", "1 G", " 1G", "1GB", "1GiB", "1P", "1e9", "0x10", "8388608T", "9223372036854775808"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) = nil error, want one", in)
		}
	}
}
