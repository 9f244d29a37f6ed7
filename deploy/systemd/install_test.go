// SPDX-License-Identifier: Apache-2.0

// Package systemd holds bpfnet's systemd unit, bpfnet.service, which
// `make install` installs with the binary; its tests check what lands
// where and that systemd accepts the unit.
package systemd

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/bpfnet/bpfnet/lab"
)

// unit is a parsed unit file: "Section.Key" to its values, in order (a
// key may be given more than once).
type unit map[string][]string

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s: not a key=value line in a section: %q", path, line)
			}
			key := section + "." + strings.TrimSpace(k)
			u[key] = append(u[key], strings.TrimSpace(v))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// one is the value of a key given once.
func (u unit) one(t *testing.T, key string) string {
	t.Helper()
	if len(u[key]) != 1 {
		t.Fatalf("%s: %q, want one value", key, u[key])
	}
	return u[key][0]
}

// words are the space-separated values of a key, all its lines together.
func (u unit) words(key string) []string {
	var out []string
	for _, v := range u[key] {
		out = append(out, strings.Fields(v)...)
	}
	return out
}

func goBinary() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}

// install runs make install into a fresh DESTDIR with the variables
// given and returns the DESTDIR.
func install(t *testing.T, vars ...string) string {
	t.Helper()
	lab.RequireTools(t, "make", "install", "sed")
	dest := t.TempDir()
	args := append([]string{"-C", "../..", "--no-print-directory", "install", "DESTDIR=" + dest, "GO=" + goBinary()}, vars...)
	cmd := exec.Command("make", args...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return dest
}

// mode checks that path is a regular file with permissions want.
func mode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatalf("after make install: %v", err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm() != want {
		t.Errorf("%s: mode %v, want a regular file with %v", path, st.Mode(), want)
	}
}

// TestInstall installs into a DESTDIR with the defaults (PREFIX=/usr/local)
// and checks the files, their modes, the unit's keys, that systemd accepts
// it, and that make uninstall removes both files.
func TestInstall(t *testing.T) {
	dest := install(t)
	bin := filepath.Join(dest, "usr/local/bin/bpfnet")
	unitPath := filepath.Join(dest, "usr/local/lib/systemd/system/bpfnet.service")
	mode(t, bin, 0o755)
	mode(t, unitPath, 0o644)
	if out, err := exec.Command(bin, "run", "--help").CombinedOutput(); err != nil || !strings.Contains(string(out), "--docker") {
		t.Errorf("installed %s run --help: %v\n%s", bin, err, out)
	}
	u := parseUnit(t, unitPath)
	if got := u.one(t, "Service.ExecStart"); got != "/usr/local/bin/bpfnet run --docker" {
		t.Errorf("ExecStart=%s, want the installed binary: /usr/local/bin/bpfnet run --docker", got)
	}
	checkUnitKeys(t, u)

	// systemd's own parser: verify with ExecStart pointing into DESTDIR,
	// where the binary is. Unknown keys and bad values are warnings with
	// exit status 0: any output fails.
	lab.RequireTools(t, "systemd-analyze")
	data, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	vdir := t.TempDir()
	vunit := filepath.Join(vdir, "bpfnet.service")
	if err := os.WriteFile(vunit, []byte(strings.ReplaceAll(string(data), "/usr/local/bin/bpfnet", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("systemd-analyze", "verify", vunit).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", vunit, err, out)
	}

	// The CNI node agent's unit and the plugin, named after its CNI type.
	plugin := filepath.Join(dest, "opt/cni/bin/bpfnet")
	cniUnitPath := filepath.Join(dest, "usr/local/lib/systemd/system/bpfnet-cni.service")
	mode(t, plugin, 0o755)
	mode(t, cniUnitPath, 0o644)
	cu := parseUnit(t, cniUnitPath)
	if got := cu.one(t, "Service.ExecStart"); got != "/usr/local/bin/bpfnet run --cni" {
		t.Errorf("bpfnet-cni.service ExecStart=%s, want /usr/local/bin/bpfnet run --cni", got)
	}
	for key, want := range map[string]string{
		"Unit.RequiresMountsFor": "/sys/fs/bpf", "Unit.Conflicts": "bpfnet.service",
		"Service.Restart": "on-failure", "Service.RestartPreventExitStatus": "78",
	} {
		if got := cu.one(t, key); got != want {
			t.Errorf("bpfnet-cni.service %s=%s, want %s", key, got, want)
		}
	}
	if !slices.Equal(cu.words("Service.CapabilityBoundingSet"), u.words("Service.CapabilityBoundingSet")) {
		t.Errorf("bpfnet-cni.service has capabilities %v, bpfnet.service %v: the agent needs the same", cu.words("Service.CapabilityBoundingSet"), u.words("Service.CapabilityBoundingSet"))
	}
	cdata, err := os.ReadFile(cniUnitPath)
	if err != nil {
		t.Fatal(err)
	}
	cvunit := filepath.Join(vdir, "bpfnet-cni.service")
	if err := os.WriteFile(cvunit, []byte(strings.ReplaceAll(string(cdata), "/usr/local/bin/bpfnet", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("systemd-analyze", "verify", cvunit).CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", cvunit, err, out)
	}
	// The installed plugin is the CNI plugin: asked for its versions with
	// no runtime around, it answers as skel does.
	vcmd := exec.Command(plugin)
	vcmd.Env = []string{"CNI_COMMAND=VERSION"}
	vcmd.Stdin = strings.NewReader(`{"cniVersion":"1.1.0"}`)
	if vout, err := vcmd.Output(); err != nil || !strings.Contains(string(vout), `"1.1.0"`) || !strings.Contains(string(vout), `"0.4.0"`) {
		t.Errorf("%s VERSION: %v %s, want supportedVersions 0.4.0 to 1.1.0", plugin, err, vout)
	}
	// Its positive twin: a unit with a bad value does fail this check.
	bad := filepath.Join(t.TempDir(), "bpfnet.service")
	os.WriteFile(bad, []byte(strings.ReplaceAll(strings.ReplaceAll(string(data), "/usr/local/bin/bpfnet", bin), "Restart=on-failure", "Restart=sometimes")), 0o644)
	if out, _ := exec.Command("systemd-analyze", "verify", bad).CombinedOutput(); !strings.Contains(string(out), "sometimes") {
		t.Errorf("systemd-analyze verify of a unit with Restart=sometimes said nothing of it: %q", out)
	}

	cmd := exec.Command("make", "-C", "../..", "--no-print-directory", "uninstall", "DESTDIR="+dest)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make uninstall: %v\n%s", err, out)
	}
	for _, p := range []string{bin, unitPath, plugin, cniUnitPath} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("after make uninstall, %s: %v, want it gone", p, err)
		}
	}
}

// TestInstallPrefixUsr is what a Debian package builds: PREFIX=/usr puts
// the binary in /usr/bin and the unit in systemd's folder for packages.
func TestInstallPrefixUsr(t *testing.T) {
	dest := install(t, "PREFIX=/usr", "UNITDIR=/lib/systemd/system")
	mode(t, filepath.Join(dest, "usr/bin/bpfnet"), 0o755)
	u := parseUnit(t, filepath.Join(dest, "lib/systemd/system/bpfnet.service"))
	if got := u.one(t, "Service.ExecStart"); got != "/usr/bin/bpfnet run --docker" {
		t.Errorf("ExecStart=%s, want /usr/bin/bpfnet run --docker", got)
	}
}

// checkUnitKeys asserts the choices the unit's comments explain.
func checkUnitKeys(t *testing.T, u unit) {
	t.Helper()
	for key, want := range map[string]string{
		"Unit.After":                       "docker.service",
		"Unit.Wants":                       "docker.service",
		"Unit.RequiresMountsFor":           "/sys/fs/bpf",
		"Service.Restart":                  "on-failure",
		"Unit.StartLimitIntervalSec":       "0",
		"Service.RestartPreventExitStatus": "78",
		"Service.NoNewPrivileges":          "yes",
		"Install.WantedBy":                 "multi-user.target",
	} {
		if got := u.one(t, key); got != want {
			t.Errorf("%s=%s, want %s", key, got, want)
		}
	}
	// A docker restart must not stop bpfnet, and a stop must not tear
	// the pinned datapath down.
	for _, key := range []string{"Unit.BindsTo", "Unit.Requires", "Unit.PartOf", "Service.ExecStop", "Service.ExecStopPost"} {
		if v, ok := u[key]; ok {
			t.Errorf("%s=%q: want none", key, v)
		}
	}
	caps := u.words("Service.CapabilityBoundingSet")
	for _, c := range []string{"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE"} {
		if !slices.Contains(caps, c) {
			t.Errorf("CapabilityBoundingSet %v lacks %s", caps, c)
		}
	}
}
