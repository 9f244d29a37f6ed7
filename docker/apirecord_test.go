// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/network"

	"github.com/bpfnet/bpfnet/lab"
)

// record makes TestAPIFixturesRecorded write what the dockerd of this
// machine answers into testdata/api/1.41 (and derive the newer versions
// from it, see apiderive_test.go) instead of comparing it with them:
//
//	go test -count=1 -run TestAPIFixturesRecorded ./docker -record
var record = flag.Bool("record", false, "rewrite testdata/api from a real dockerd instead of checking the fixtures against it")

// derive makes TestAPIFixturesDerived rewrite the derived fixtures from
// the committed 1.41 ones, after a change of apiSteps:
//
//	go test -count=1 -run TestAPIFixturesDerived ./docker -derive
var derive = flag.Bool("derive", false, "rewrite the derived testdata/api fixtures from the recorded ones")

// recordedVersion is the Engine API version of the dockerd on this
// machine (Docker 20.10), whose answers are recorded as they are.
const recordedVersion = "1.41"

// apiTestdata is where the fixtures of each API version live.
const apiTestdata = "testdata/api"

// TestAPIFixturesRecorded runs the scenario of the fixtures against a
// private dockerd: a dual-stack user bridge network "appnet" beside the default
// bridge, a container "web" with published ports on both, a container
// "db" on appnet only. It records the answers to what Source asks (and
// /_ping, /version and the events of the scenario) and checks that the
// committed 1.41 fixtures have the same shape: the same fields, headers
// and map keys (ids aside). With -record it rewrites them instead.
func TestAPIFixturesRecorded(t *testing.T) {
	requireRoot(t)
	requireTools(t, "dockerd", "containerd", "runc", "nsenter", "unshare")
	sweepStale(t)
	topo := lab.Setup(t, lab.Config{Bridges: []lab.BridgeConfig{{Subnet: "172.30.0.0/24"}}})
	d := startDockerd(t, topo.Host, topo.Bridges[0].Name, topo.Prefix)
	// The events recorded begin with the image's import (irrelevant to
	// Watch), whole seconds before: since is in seconds.
	since := time.Now().Add(-time.Second)
	d.ImportImage()

	dir := t.TempDir()
	if *record {
		dir = filepath.Join(apiTestdata, recordedVersion)
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
	}
	recordScenario(t, d, dir, since)
	if *record {
		t.Logf("recorded %s; deriving the newer versions", dir)
		if err := deriveFixtures(apiTestdata); err != nil {
			t.Fatal(err)
		}
		return
	}
	want := filepath.Join(apiTestdata, recordedVersion)
	compared := 0
	err := filepath.WalkDir(want, func(path string, de os.DirEntry, err error) error {
		if err != nil || de.IsDir() || !strings.HasSuffix(path, ".json") {
			return err
		}
		rel, _ := filepath.Rel(want, path)
		got := filepath.Join(dir, rel)
		if strings.HasPrefix(rel, "containers"+string(filepath.Separator)) {
			// Inspected containers are named by their id, which is
			// new each run: compare by the container's name.
			got = recordedByName(t, dir, path)
		}
		gs, err := shapeOfFile(got)
		if err != nil {
			t.Errorf("recorded now: %v", err)
			return nil
		}
		ws, err := shapeOfFile(path)
		if err != nil {
			return err
		}
		if !slices.Equal(gs, ws) {
			t.Errorf("%s: the committed fixture's shape differs from what this dockerd answers (re-record with -record):\n only now:       %v\n only committed: %v", rel, minus(gs, ws), minus(ws, gs))
		}
		compared++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// _ping, version, networks, containers, events and the two inspected.
	if compared != 7 {
		t.Errorf("compared %d fixture files, want 7", compared)
	}
}

// recordScenario builds the fixtures' scenario on d and writes the
// answers into dir.
func recordScenario(t *testing.T, d *dockerd, dir string, since time.Time) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// appnet is dual-stack (docker network create --ipv6), so that the
	// fixtures have an IPv6 network's shapes: EnableIPv6, an IPAM config
	// of each family, the endpoints' GlobalIPv6Address.
	enable6 := true
	nw, err := d.cli.NetworkCreate(ctx, "appnet", network.CreateOptions{
		Driver: "bridge", EnableIPv6: &enable6,
		IPAM: &network.IPAM{Config: []network.IPAMConfig{
			{Subnet: "172.30.5.0/24", Gateway: "172.30.5.1"},
			{Subnet: "fd00:5::/64", Gateway: "fd00:5::1"},
		}},
		Labels: map[string]string{"com.docker.compose.network": "appnet"},
	})
	if err != nil {
		t.Fatal(err)
	}
	web := d.Run(ctr{name: "web", publish: []string{"8080:80", "127.0.0.1:8081:81", "5353:53/udp"}, cmd: []string{"sleep", "3600"}})
	if err := d.cli.NetworkConnect(ctx, nw.ID, web, nil); err != nil {
		t.Fatal(err)
	}
	created, err := d.cli.ContainerCreate(ctx,
		&container.Config{Image: testImage, Hostname: "db", Cmd: []string{"sleep", "3600"}, Labels: map[string]string{"com.docker.compose.service": "db"}},
		&container.HostConfig{NetworkMode: "appnet"}, nil, nil, "db")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cli.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		t.Fatal(err)
	}
	until := time.Now().Add(time.Second)

	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", d.sock)
	}}}
	get := func(path string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/v"+recordedVersion+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s, %v: %s", path, resp.Status, err, b)
		}
		return resp, b
	}
	if err := os.MkdirAll(filepath.Join(dir, "containers"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name string, body []byte) {
		t.Helper()
		var buf bytes.Buffer
		if err := json.Indent(&buf, bytes.TrimSpace(body), "", "  "); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		buf.WriteByte('\n')
		if err := os.WriteFile(filepath.Join(dir, name), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	resp, body := get("/_ping")
	headers := map[string]string{}
	for k := range resp.Header {
		switch k {
		case "Date", "Content-Length", "Content-Type":
		default:
			headers[k] = resp.Header.Get(k)
		}
	}
	p, _ := json.Marshal(pingFixture{Headers: headers, Body: string(body)})
	write("_ping.json", p)
	_, body = get("/version")
	write("version.json", body)
	_, body = get("/networks")
	write("networks.json", body)
	_, body = get("/containers/json")
	write("containers.json", body)
	var list []struct{ Id string }
	if err := json.Unmarshal(body, &list); err != nil || len(list) != 2 {
		t.Fatalf("containers listed: %s (%v)", body, err)
	}
	for _, c := range list {
		_, body = get("/containers/" + c.Id + "/json")
		write(filepath.Join("containers", c.Id+".json"), body)
	}
	q := url.Values{"since": {strconv.FormatInt(since.Unix(), 10)}, "until": {strconv.FormatInt(until.Unix(), 10)}}
	time.Sleep(time.Until(until) + 100*time.Millisecond)
	_, body = get("/events?" + q.Encode())
	// One JSON document a line, as the stream has them.
	var lines []string
	dec := json.NewDecoder(bytes.NewReader(body))
	for dec.More() {
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			t.Fatalf("events: %v", err)
		}
		var buf bytes.Buffer
		json.Compact(&buf, raw)
		lines = append(lines, buf.String())
	}
	if len(lines) == 0 {
		t.Fatal("no events recorded")
	}
	if err := os.WriteFile(filepath.Join(dir, "events.json"), []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("recorded %d events; web %s, db %s, appnet %s", len(lines), web, created.ID, nw.ID)
}

// pingFixture is the recorded answer to GET /_ping.
type pingFixture struct {
	Headers map[string]string `json:"headers"`
	Body    string            `json:"body"`
}

// recordedByName finds, among the containers inspected into dir, the one
// with the name of the committed fixture at path.
func recordedByName(t *testing.T, dir, path string) string {
	name := func(p string) string {
		b, _ := os.ReadFile(p)
		var c struct{ Name string }
		json.Unmarshal(b, &c)
		return c.Name
	}
	want := name(path)
	files, _ := filepath.Glob(filepath.Join(dir, "containers", "*.json"))
	for _, f := range files {
		if name(f) == want {
			return f
		}
	}
	t.Errorf("no container %q recorded now", want)
	return path
}

var hexID = regexp.MustCompile(`^[0-9a-f]{64}$`)

// shapeOfFile returns the shape of a JSON file, or of each line of an
// events.json.
func shapeOfFile(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	dec := json.NewDecoder(bytes.NewReader(b))
	for dec.More() {
		var v any
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if strings.HasSuffix(path, "_ping.json") {
			// Header values vary (the Server version); their names not.
			if m, ok := v.(map[string]any); ok {
				for k := range m["headers"].(map[string]any) {
					set["headers."+k] = true
				}
				continue
			}
		}
		shape(v, "", set)
	}
	return slices.Sorted(maps.Keys(set)), nil
}

// shape adds the paths of v's fields to set: "a.b" for objects, "a[]" for
// array elements, ids as "<id>", and the JSON type of each leaf.
func shape(v any, path string, set map[string]bool) {
	switch x := v.(type) {
	case map[string]any:
		set[path+"{}"] = true
		if path == ".GraphDriver.Data" {
			return // the storage driver's, overlay2 or vfs (startDockerd)
		}
		for k, e := range x {
			if hexID.MatchString(k) {
				k = "<id>"
			}
			shape(e, path+"."+k, set)
		}
	case []any:
		set[path+"[]"] = true
		for _, e := range x {
			shape(e, path+"[]", set)
		}
	case nil:
		// null and a value are the same field.
		set[path] = true
	default:
		set[path] = true
	}
}

func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}
