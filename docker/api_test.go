// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"bytes"
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api"
	"github.com/docker/docker/api/types/network"
	"github.com/docker/docker/api/types/versions"
	"github.com/docker/docker/client"

	"github.com/bpfnet/bpfnet/datapath"
)

// apiVersions are the Engine API versions with fixtures in testdata/api:
// Docker 20.10 (recorded), 25 (the oldest API Docker 29 accepts), 27,
// 28.0, 28.5 (the newest the client speaks) and 29.
var apiVersions = []string{"1.41", "1.44", "1.47", "1.48", "1.51", "1.52"}

// What the fixtures' dockerd has (testdata/api/README.md): the ids,
// bridges, pids and MACs of the recording. Re-recording changes them.
const (
	fxWebID    = "78fe0f6532b75f1dc16b389c374b175bd92b13061a294c9bc5ef8b1f1373013c"
	fxDBID     = "703953db9147440fe943b8b21a007f35950e6295d620af3725c1437d28052a1a"
	fxAppnetID = "32274fded75c71e241390fc03da3e088825e94953d0e2385363bcf56c4b8ccfd"
	fxBridgeID = "f2e2c1ee3e97"
	fxDocker0  = "bnbcd5-br0" // the default bridge, --bridge
	fxAppnetBr = "br-32274fded75c"
	fxWebPid   = 24431
	fxDBPid    = 24527
)

// fxKernel has the bridges and veths of the fixtures' dockerd.
func fxKernel() *fakeKernel {
	return &fakeKernel{
		bridges: map[string]fakeBridge{
			fxDocker0:  {index: 10, addrs: []netip.Prefix{pfx("172.30.0.1/24")}},
			fxAppnetBr: {index: 11, addrs: []netip.Prefix{pfx("172.30.5.1/24"), pfx("fd00:5::1/64")}},
		},
		veths: map[string]fakeVeth{
			"24431/02:42:ac:1e:00:02": {"vethweb0", 10},
			"24431/02:42:ac:1e:05:02": {"vethweb1", 11},
			"24527/02:42:ac:1e:05:03": {"vethdb", 11},
		},
	}
}

// fxState is the datapath's state of the fixtures, the same for every
// API version. appnet is dual-stack: its endpoints have IPv6 addresses,
// and web's bindings on :: (Docker lists them once the container has an
// IPv6 endpoint) are IPv6 mappings to its IPv6 address there.
func fxState() datapath.State {
	web := ip("172.30.5.2") // appnet sorts before bridge: its address gets the ports
	web6 := ip("fd00:5::2")
	return datapath.State{
		Networks: []datapath.Network{
			{Name: "appnet", Bridge: fxAppnetBr, Subnet: pfx("172.30.5.0/24"), Gateway: ip("172.30.5.1"),
				Subnet6: pfx("fd00:5::/64"), Gateway6: ip("fd00:5::1"), Masquerade: true},
			{Name: "bridge", Bridge: fxDocker0, Subnet: pfx("172.30.0.0/24"), Gateway: ip("172.30.0.1"), Masquerade: true},
		},
		Endpoints: []datapath.Endpoint{
			{Container: "db", ContainerID: fxDBID, Network: "appnet", Addr: ip("172.30.5.3"), Addr6: ip("fd00:5::3"), MAC: mac("02:42:ac:1e:05:03"), HostVeth: "vethdb", Labels: map[string]string{"com.docker.compose.service": "db"}},
			{Container: "web", ContainerID: fxWebID, Network: "appnet", Addr: web, Addr6: web6, MAC: mac("02:42:ac:1e:05:02"), HostVeth: "vethweb1"},
			{Container: "web", ContainerID: fxWebID, Network: "bridge", Addr: ip("172.30.0.2"), MAC: mac("02:42:ac:1e:00:02"), HostVeth: "vethweb0"},
		},
		Ports: []datapath.PortMapping{
			{Proto: datapath.TCP, HostPort: 8080, ContainerIP: web, ContainerPort: 80, Container: "web"},
			{Proto: datapath.TCP, HostIP: ip("::"), HostPort: 8080, ContainerIP: web6, ContainerPort: 80, Container: "web"},
			{Proto: datapath.TCP, HostIP: ip("127.0.0.1"), HostPort: 8081, ContainerIP: web, ContainerPort: 81, Container: "web"},
			{Proto: datapath.UDP, HostPort: 5353, ContainerIP: web, ContainerPort: 53, Container: "web"},
			{Proto: datapath.UDP, HostIP: ip("::"), HostPort: 5353, ContainerIP: web6, ContainerPort: 53, Container: "web"},
		},
	}
}

// negotiated is the version the client must settle on with a daemon of
// API version v: v, capped at the client's maximum.
func negotiated(v string) string {
	if versions.LessThan(api.DefaultVersion, v) {
		return api.DefaultVersion
	}
	return v
}

func TestAPIFixturesPresent(t *testing.T) {
	dirs, err := os.ReadDir(apiTestdata)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range dirs {
		if d.IsDir() {
			got = append(got, d.Name())
		}
	}
	if !slices.Equal(got, apiVersions) {
		t.Errorf("fixtures for %v, the tests cover %v", got, apiVersions)
	}
	if _, err := os.Stat(filepath.Join(apiTestdata, "README.md")); err != nil {
		t.Errorf("the fixtures' README: %v", err)
	}
}

// TestAPIFixturesDerived: the committed fixtures of the newer versions
// are exactly what apiSteps make of the recorded ones (none edited by
// hand, none stale after a re-recording). With -derive it first rewrites
// them from the committed 1.41 ones.
func TestAPIFixturesDerived(t *testing.T) {
	if *derive {
		if err := deriveFixtures(apiTestdata); err != nil {
			t.Fatal(err)
		}
	}
	tmp := t.TempDir()
	if err := os.CopyFS(filepath.Join(tmp, recordedVersion), os.DirFS(filepath.Join(apiTestdata, recordedVersion))); err != nil {
		t.Fatal(err)
	}
	if err := deriveFixtures(tmp); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, v := range apiVersions[1:] {
		err := filepath.WalkDir(filepath.Join(tmp, v), func(path string, de os.DirEntry, err error) error {
			if err != nil || de.IsDir() {
				return err
			}
			rel, _ := filepath.Rel(tmp, path)
			got, _ := os.ReadFile(path)
			want, err := os.ReadFile(filepath.Join(apiTestdata, rel))
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s differs from what its derivation makes (%v): regenerate with -record", rel, err)
			}
			n++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if n != 7*len(apiVersions[1:]) {
		t.Errorf("compared %d derived files, want %d", n, 7*len(apiVersions[1:]))
	}
}

// TestAPIVersionShapes: what the table below relies on is really in the
// fixtures: 1.52 has no top-level NetworkSettings.IPAddress and no
// events' status, id or from; the older versions have both.
func TestAPIVersionShapes(t *testing.T) {
	for _, v := range apiVersions {
		fx := loadAPIFixture(t, v)
		var c struct {
			NetworkSettings map[string]json.RawMessage
		}
		if err := json.Unmarshal(fx.Inspect[fxWebID], &c); err != nil {
			t.Fatal(err)
		}
		_, topIP := c.NetworkSettings["IPAddress"]
		legacy := 0
		for _, line := range fx.Events {
			var e map[string]json.RawMessage
			if err := json.Unmarshal(line, &e); err != nil {
				t.Fatal(err)
			}
			_, st := e["status"]
			_, id := e["id"]
			_, from := e["from"]
			if st && id && from {
				legacy++
			}
		}
		old := versions.LessThan(v, "1.52")
		if topIP != old || (legacy > 0) != old {
			t.Errorf("%s: top-level NetworkSettings.IPAddress %v, %d events with status/id/from; want both only before 1.52", v, topIP, legacy)
		}
	}
}

// TestAPIVersions serves each version's fixtures as its dockerd would and
// checks that the client negotiates that version (capped at its maximum),
// that Source.State converts them all to the same state, and that Watch
// reads the state again on each version's events that matter, whatever
// their shape.
func TestAPIVersions(t *testing.T) {
	for _, v := range apiVersions {
		t.Run(v, func(t *testing.T) {
			fx := loadAPIFixture(t, v)
			f := newFakeDocker(t)
			f.Serve(fx)
			s, err := New(f.Host())
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			s.k = fxKernel()
			s.Logger = testLogger(t)

			st, err := s.State(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			want := negotiated(v)
			if got := s.APIVersion(); got != want {
				t.Errorf("negotiated API version %s, want %s", got, want)
			}
			// The first ping is unversioned; everything after it at the
			// negotiated version (the fake fails any other).
			vs := f.Versions()
			if len(vs) < 4 || vs[0] != "" {
				t.Fatalf("request versions %v: want an unversioned ping first, then the list and inspections", vs)
			}
			for _, got := range vs[1:] {
				if got != want {
					t.Errorf("a request at API version %q, want %s (all: %v)", got, want, vs)
				}
			}
			if !reflect.DeepEqual(st, fxState()) {
				t.Errorf("state:\n got %+v\nwant %+v", st, fxState())
			}
			if err := st.Validate(); err != nil {
				t.Errorf("state does not validate: %v", err)
			}
			// Docker's own settings of the networks, beside the datapath's.
			snap, err := s.Snapshot(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(snap.Networks) != 2 || snap.Networks[0].ID != fxAppnetID || snap.Networks[0].Default || !snap.Networks[0].ICC ||
				!strings.HasPrefix(snap.Networks[1].ID, fxBridgeID) || !snap.Networks[1].Default || !snap.Networks[1].ICC {
				t.Errorf("networks: %+v", snap.Networks)
			}
			// GET /version, at the negotiated version, says the daemon's.
			sv, err := s.cli.ServerVersion(context.Background())
			if err != nil || sv.APIVersion != v || sv.MinAPIVersion != fx.MinVersion {
				t.Errorf("server version: API %s, min %s (%v); want %s, %s", sv.APIVersion, sv.MinAPIVersion, err, v, fx.MinVersion)
			}

			// Watch: each event line as the daemon sends it.
			w := startWatch(t, s)
			if got := w.next(t, 2*time.Second); !reflect.DeepEqual(got, fxState()) {
				t.Fatalf("Watch's first state:\n got %+v\nwant %+v", got, fxState())
			}
			waitFor(t, "the event subscription", func() bool { return f.Subscribers() == 1 })
			refreshes := map[string]bool{"network/create": true, "network/connect": true, "container/start": true}
			seen := map[bool]int{}
			for _, line := range fx.Events {
				var e struct{ Type, Action string }
				if err := json.Unmarshal(line, &e); err != nil {
					t.Fatal(err)
				}
				f.EmitRaw(line)
				if refreshes[e.Type+"/"+e.Action] {
					if got := w.next(t, time.Second); !reflect.DeepEqual(got, fxState()) {
						t.Errorf("after %s: state %+v", line, got)
					}
				} else {
					w.none(t, 150*time.Millisecond)
				}
				seen[refreshes[e.Type+"/"+e.Action]]++
			}
			// Both kinds, or the loop proves nothing.
			if seen[true] == 0 || seen[false] == 0 {
				t.Errorf("%d events that refresh, %d that do not; the fixture needs both", seen[true], seen[false])
			}
		})
	}
}

// TestAPIVersionRange: the fake refuses versions outside its daemon's
// range as Docker 29 does, so that TestAPIVersions's negotiation check
// means something; a client pinned inside the range is served.
func TestAPIVersionRange(t *testing.T) {
	f := newFakeDocker(t)
	f.Serve(loadAPIFixture(t, "1.52"))
	for _, tc := range []struct {
		version string
		err     string
	}{
		{"1.41", "client version 1.41 is too old. Minimum supported API version is 1.44"},
		{"1.44", ""},
		{api.DefaultVersion, ""},
		{"1.53", "client version 1.53 is too new. Maximum supported API version is 1.52"},
	} {
		cli, err := client.NewClientWithOpts(client.WithHost(f.Host()), client.WithVersion(tc.version))
		if err != nil {
			t.Fatal(err)
		}
		_, err = cli.NetworkList(context.Background(), network.ListOptions{})
		cli.Close()
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("client at %s: got %v, want %q", tc.version, err, tc.err)
		}
	}
}
