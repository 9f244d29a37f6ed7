// SPDX-License-Identifier: Apache-2.0

package docker

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// The fixtures of the API versions newer than the dockerd on this machine
// are derived from the recorded 1.41 ones, one step per Engine API
// version, each change named after its entry in moby's
// api/docs/CHANGELOG.md (and the version's swagger, api/docs/v1.NN.yaml).
// Each step applies to the result of the one before: a change made in 1.45
// holds in 1.47, 1.48 and 1.52 too. testdata/api/README.md says the same.

// apiFixtureSet is one version's fixtures as generic JSON.
type apiFixtureSet struct {
	ping       map[string]any
	version    map[string]any
	networks   []any
	containers []any
	inspect    map[string]map[string]any // by file name
	events     []map[string]any
}

type apiStep struct {
	version string // API version
	docker  string // the Docker release whose maximum it is
	minAPI  string // that release's MinAPIVersion
	changes []apiChange
}

type apiChange struct {
	entry string // the changelog entry, for the README and the reader
	apply func(*apiFixtureSet)
}

var apiSteps = []apiStep{
	{version: "1.44", docker: "25.0.0", minAPI: "1.24", changes: []apiChange{
		{"v1.42: GET /_ping and HEAD /_ping now return Builder-Version by default; they now return a Swarm header", func(s *apiFixtureSet) {
			h := s.ping["headers"].(map[string]any)
			h["Builder-Version"] = "2"
			h["Swarm"] = "inactive"
		}},
		{"v1.42: GET /containers/{id}/json now omits the KernelMemory and KernelMemoryTCP if they are not set", func(s *apiFixtureSet) {
			for _, c := range s.inspect {
				hc := c["HostConfig"].(map[string]any)
				delete(hc, "KernelMemory")
				delete(hc, "KernelMemoryTCP")
			}
		}},
		{"v1.44: a new field DNSNames, all non-fully qualified DNS names a container takes on a network, in GET /containers/{id}/json (the container's name and short id on a user-defined network; none on the default bridge, which has no DNS)", func(s *apiFixtureSet) {
			for _, c := range s.inspect {
				name := strings.TrimPrefix(c["Name"].(string), "/")
				short := c["Id"].(string)[:12]
				for netName, es := range endpoints(c) {
					if netName == "bridge" {
						es["DNSNames"] = nil
					} else {
						es["DNSNames"] = []any{name, short}
					}
				}
			}
			for _, c := range s.containers {
				for _, es := range endpoints(c.(map[string]any)) {
					es["DNSNames"] = nil
				}
			}
		}},
	}},
	{version: "1.47", docker: "27.3.1", minAPI: "1.24", changes: []apiChange{
		{"v1.45: the Aliases field returned by GET /containers/{name}/json no longer contains the short container ID, but exactly the values submitted to POST /containers/create (none here); DNSNames should be used instead", func(s *apiFixtureSet) {
			for _, c := range s.inspect {
				for _, es := range endpoints(c) {
					es["Aliases"] = nil
				}
			}
		}},
	}},
	{version: "1.48", docker: "28.0.0", minAPI: "1.24", changes: []apiChange{
		{"v1.48: GET /networks/{id} now returns an EnableIPv4 field", func(s *apiFixtureSet) {
			for _, n := range s.networks {
				n.(map[string]any)["EnableIPv4"] = true
			}
		}},
		{"v1.48: GET /containers/json (and GET /containers/{id}/json) now return a GwPriority field for each network endpoint", func(s *apiFixtureSet) {
			for _, c := range s.containers {
				for _, es := range endpoints(c.(map[string]any)) {
					es["GwPriority"] = json.Number("0")
				}
			}
			for _, c := range s.inspect {
				for _, es := range endpoints(c) {
					es["GwPriority"] = json.Number("0")
				}
			}
		}},
		{"Docker 28 bridge driver: appnet as created with -o com.docker.network.bridge.gateway_mode_ipv4=nat (the default mode, so the datapath's state stays the same); the Engine API passes the option on in Options", func(s *apiFixtureSet) {
			for _, n := range s.networks {
				n := n.(map[string]any)
				if n["Name"] == "appnet" {
					opts, _ := n["Options"].(map[string]any)
					if opts == nil {
						opts = map[string]any{}
						n["Options"] = opts
					}
					opts["com.docker.network.bridge.gateway_mode_ipv4"] = "nat"
				}
			}
		}},
	}},
	{version: "1.51", docker: "28.5.2", minAPI: "1.24", changes: []apiChange{
		// The newest version the vendored client (github.com/docker/docker
		// v28.5.2) speaks: the one it settles on with Docker 29.
		{"v1.49 to v1.51: nothing in the answers for bridge networks and containers (v1.51 deprecates NetworkSettings.Bridge, still returned)", func(*apiFixtureSet) {}},
	}},
	{version: "1.52", docker: "29.0.0", minAPI: "1.44", changes: []apiChange{
		{"v1.52: GET /containers/{id}/json: the NetworkSettings no longer returns the deprecated Bridge, HairpinMode, LinkLocalIPv6Address, LinkLocalIPv6PrefixLen, SecondaryIPAddresses, SecondaryIPv6Addresses, EndpointID, Gateway, GlobalIPv6Address, GlobalIPv6PrefixLen, IPAddress, IPPrefixLen, IPv6Gateway, and MacAddress fields", func(s *apiFixtureSet) {
			for _, c := range s.inspect {
				ns := c["NetworkSettings"].(map[string]any)
				for _, f := range []string{"Bridge", "HairpinMode", "LinkLocalIPv6Address", "LinkLocalIPv6PrefixLen", "SecondaryIPAddresses", "SecondaryIPv6Addresses", "EndpointID", "Gateway", "GlobalIPv6Address", "GlobalIPv6PrefixLen", "IPAddress", "IPPrefixLen", "IPv6Gateway", "MacAddress"} {
					delete(ns, f)
				}
			}
		}},
		{"v1.52: GET /events no longer includes the deprecated status, id, and from fields", func(s *apiFixtureSet) {
			for _, e := range s.events {
				delete(e, "status")
				delete(e, "id")
				delete(e, "from")
			}
		}},
		{"v1.52 (v1.52.yaml): GET /networks lists NetworkSummary, which has no Containers (only GET /networks/{id}, NetworkInspect, has them)", func(s *apiFixtureSet) {
			for _, n := range s.networks {
				delete(n.(map[string]any), "Containers")
			}
		}},
		{"v1.52: GET /container/{id}/json now omits Config.OnBuild if its value is empty; KernelMemoryTCP removed", func(s *apiFixtureSet) {
			for _, c := range s.inspect {
				cfg := c["Config"].(map[string]any)
				if cfg["OnBuild"] == nil {
					delete(cfg, "OnBuild")
				}
			}
		}},
	}},
}

// endpoints returns the EndpointSettings of a container, inspected or
// listed, by network name.
func endpoints(c map[string]any) map[string]map[string]any {
	out := map[string]map[string]any{}
	ns, _ := c["NetworkSettings"].(map[string]any)
	nets, _ := ns["Networks"].(map[string]any)
	for name, es := range nets {
		if m, ok := es.(map[string]any); ok {
			out[name] = m
		}
	}
	return out
}

// deriveFixtures writes root/<version> for every step from
// root/recordedVersion.
func deriveFixtures(root string) error {
	s, err := readFixtureSet(filepath.Join(root, recordedVersion))
	if err != nil {
		return err
	}
	for _, st := range apiSteps {
		for _, c := range st.changes {
			c.apply(s)
		}
		s.ping["headers"].(map[string]any)["Api-Version"] = st.version
		s.ping["headers"].(map[string]any)["Server"] = "Docker/" + st.docker + " (linux)"
		s.version["ApiVersion"], s.version["MinAPIVersion"], s.version["Version"] = st.version, st.minAPI, st.docker
		for _, comp := range s.version["Components"].([]any) {
			comp := comp.(map[string]any)
			if comp["Name"] == "Engine" {
				comp["Version"] = st.docker
				d := comp["Details"].(map[string]any)
				d["ApiVersion"], d["MinAPIVersion"] = st.version, st.minAPI
			}
		}
		if err := s.write(filepath.Join(root, st.version)); err != nil {
			return fmt.Errorf("writing the %s fixtures: %w", st.version, err)
		}
	}
	return nil
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // timeNano does not fit a float64
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

func readFixtureSet(dir string) (*apiFixtureSet, error) {
	s := &apiFixtureSet{inspect: map[string]map[string]any{}}
	for name, v := range map[string]any{"_ping.json": &s.ping, "version.json": &s.version, "networks.json": &s.networks, "containers.json": &s.containers} {
		if err := readJSON(filepath.Join(dir, name), v); err != nil {
			return nil, err
		}
	}
	files, err := filepath.Glob(filepath.Join(dir, "containers", "*.json"))
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		var c map[string]any
		if err := readJSON(f, &c); err != nil {
			return nil, err
		}
		s.inspect[filepath.Base(f)] = c
	}
	b, err := os.ReadFile(filepath.Join(dir, "events.json"))
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		dec := json.NewDecoder(strings.NewReader(line))
		dec.UseNumber()
		var e map[string]any
		if err := dec.Decode(&e); err != nil {
			return nil, fmt.Errorf("events.json: %w", err)
		}
		s.events = append(s.events, e)
	}
	return s, nil
}

func (s *apiFixtureSet) write(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "containers"), 0o755); err != nil {
		return err
	}
	put := func(name string, v any) error {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, name), append(b, '\n'), 0o644)
	}
	for name, v := range map[string]any{"_ping.json": s.ping, "version.json": s.version, "networks.json": s.networks, "containers.json": s.containers} {
		if err := put(name, v); err != nil {
			return err
		}
	}
	for name, c := range s.inspect {
		if err := put(filepath.Join("containers", name), c); err != nil {
			return err
		}
	}
	var lines []string
	for _, e := range s.events {
		b, err := json.Marshal(e)
		if err != nil {
			return err
		}
		lines = append(lines, string(b))
	}
	return os.WriteFile(filepath.Join(dir, "events.json"), []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}
