// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"

	"github.com/bpfnet/bpfnet/cni"
)

// netConf is the plugin's part of the network configuration.
type netConf struct {
	types.PluginConf
	PinPath string `json:"pinPath,omitempty"`
	Socket  string `json:"socket,omitempty"`
	// StateDir is the agent's --cni-state-dir, where DEL removes the
	// attachment itself when no agent answers.
	StateDir      string `json:"stateDir,omitempty"`
	RuntimeConfig struct {
		PortMappings []cni.Port `json:"portMappings,omitempty"`
	} `json:"runtimeConfig,omitempty"`
}

// k8sArgs are the CNI_ARGS kubelet passes (with IgnoreUnknown=1).
type k8sArgs struct {
	types.CommonArgs
	K8S_POD_NAME      types.UnmarshallableString //nolint:revive // CNI_ARGS keys
	K8S_POD_NAMESPACE types.UnmarshallableString //nolint:revive
}

func parseConf(args *skel.CmdArgs) (*netConf, error) {
	conf := &netConf{}
	if err := json.Unmarshal(args.StdinData, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "parsing the network configuration", err.Error())
	}
	if conf.Socket == "" {
		conf.Socket = cni.DefaultSocket
	}
	if conf.StateDir == "" {
		conf.StateDir = cni.DefaultStateDir
	}
	return conf, nil
}

// attachment is the request's attachment: its key and pod always, the
// rest from prevResult when there is one (ADD, CHECK).
func attachment(args *skel.CmdArgs, conf *netConf, needResult bool) (cni.Attachment, error) {
	a := cni.Attachment{ContainerID: args.ContainerID, IfName: args.IfName, Network: conf.Name, Netns: args.Netns,
		Ports: conf.RuntimeConfig.PortMappings}
	var ka k8sArgs
	if err := types.LoadArgs(args.Args, &ka); err != nil {
		return a, types.NewError(types.ErrInvalidEnvironmentVariables, "parsing CNI_ARGS", err.Error())
	}
	a.Pod, a.Namespace = string(ka.K8S_POD_NAME), string(ka.K8S_POD_NAMESPACE)
	if !needResult {
		return a, nil
	}
	if conf.RawPrevResult == nil {
		return a, types.NewError(types.ErrInvalidNetworkConfig, "no prevResult: bpfnet is a chained plugin and comes after the bridge plugin", "")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return a, types.NewError(types.ErrDecodingFailure, "parsing prevResult", err.Error())
	}
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return a, types.NewError(types.ErrDecodingFailure, "converting prevResult", err.Error())
	}
	if err := fromResult(&a, res); err != nil {
		return a, types.NewError(types.ErrInvalidNetworkConfig, "reading prevResult", err.Error())
	}
	return a, nil
}

// fromResult finds the container's IPv4 address (and its IPv6 one on a
// dual-stack network, the first of each family), its MAC, the host veth
// and its bridge in the previous plugins' result: the host veth is an
// interface with no sandbox whose link is a port of a bridge.
func fromResult(a *cni.Attachment, res *current.Result) error {
	for _, ip := range res.IPs {
		if ip.Interface != nil {
			i := *ip.Interface
			if i < 0 || i >= len(res.Interfaces) || res.Interfaces[i].Sandbox == "" {
				continue // an address of the host side
			}
			a.MAC = res.Interfaces[i].Mac
		}
		addr, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			continue
		}
		addr = addr.Unmap()
		ones, _ := ip.Address.Mask.Size()
		gw, _ := netip.AddrFromSlice(ip.Gateway)
		switch {
		case addr.Is4() && !a.Addr.IsValid():
			if ones > 32 { // a 16-byte mask of an IPv4 address
				ones -= 96
			}
			a.Addr, a.Subnet = addr, netip.PrefixFrom(addr, ones).Masked()
			if gw.Unmap().Is4() {
				a.Gateway = gw.Unmap()
			}
		case addr.Is6() && !a.Addr6.IsValid() && !addr.IsLinkLocalUnicast():
			a.Addr6, a.Subnet6 = addr, netip.PrefixFrom(addr, ones).Masked()
			if gw.Is6() && !gw.Is4In6() {
				a.Gateway6 = gw
			}
		}
	}
	if !a.Addr.IsValid() {
		return errors.New("no IPv4 address of the container (an IPv6-only pod is not served)")
	}
	for _, i := range res.Interfaces {
		if i.Sandbox != "" {
			continue
		}
		l, err := netlink.LinkByName(i.Name)
		if err != nil || l.Type() != "veth" || l.Attrs().MasterIndex == 0 {
			continue
		}
		br, err := netlink.LinkByIndex(l.Attrs().MasterIndex)
		if err != nil || br.Type() != "bridge" {
			continue
		}
		a.HostVeth, a.Bridge = i.Name, br.Attrs().Name
		return nil
	}
	return errors.New("no host veth on a bridge among the interfaces: bpfnet is chained after the bridge plugin")
}

func call(conf *netConf, req cni.Request) (cni.Response, error) {
	req.PinPath = conf.PinPath
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	resp, err := cni.Call(ctx, conf.Socket, req)
	var ce *cni.Error
	if errors.As(err, &ce) {
		return resp, types.NewError(ce.Code, ce.Msg, ce.Details)
	}
	return resp, err
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, err := parseConf(args)
	if err != nil {
		return err
	}
	a, err := attachment(args, conf, true)
	if err != nil {
		return err
	}
	if _, err := call(conf, cni.Request{Command: cni.CmdAdd, Attachment: a}); err != nil {
		return err
	}
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}

func cmdDel(args *skel.CmdArgs) error {
	conf, err := parseConf(args)
	if err != nil {
		return err
	}
	a, err := attachment(args, conf, false)
	if err != nil {
		return err
	}
	_, err = call(conf, cni.Request{Command: cni.CmdDel, Attachment: a})
	var te *types.Error
	if !errors.As(err, &te) || te.Code != cni.CodePluginNotAvailable {
		return err
	}
	// No agent answers (stopped, or between two runs). DEL succeeds as
	// far as it can (SPEC.md, DEL), or kubelet retries it and the pod
	// stays terminating: the attachment's file goes, under the folder's
	// lock, so that the next agent does not serve it; that agent's first
	// apply removes its ports and endpoint from the datapath.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, derr := (cni.Store{Dir: conf.StateDir}).DeleteOffline(ctx, a.Key(), a.Network); derr != nil {
		return types.NewError(cni.CodeTryAgainLater, "no bpfnet agent answers, and removing the attachment without it failed", derr.Error())
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	conf, err := parseConf(args)
	if err != nil {
		return err
	}
	a, err := attachment(args, conf, true)
	if err != nil {
		return err
	}
	_, err = call(conf, cni.Request{Command: cni.CmdCheck, Attachment: a})
	return err
}

func cmdGC(args *skel.CmdArgs) error {
	conf, err := parseConf(args)
	if err != nil {
		return err
	}
	// GC without the list would remove every pod of the network: a
	// configuration without the key is refused (libcni always sets it,
	// null when no attachment is valid).
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(args.StdinData, &keys); err != nil {
		return types.NewError(types.ErrDecodingFailure, "parsing the network configuration", err.Error())
	}
	if _, ok := keys["cni.dev/valid-attachments"]; !ok {
		return types.NewError(types.ErrInvalidNetworkConfig, "GC without cni.dev/valid-attachments", "")
	}
	req := cni.Request{Command: cni.CmdGC, Attachment: cni.Attachment{Network: conf.Name}}
	for _, v := range conf.ValidAttachments {
		req.Valid = append(req.Valid, cni.Key{ContainerID: v.ContainerID, IfName: v.IfName})
	}
	if req.Valid == nil {
		req.Valid = []cni.Key{}
	}
	_, err = call(conf, req)
	return err
}

func cmdStatus(args *skel.CmdArgs) error {
	conf, err := parseConf(args)
	if err != nil {
		return err
	}
	if _, err := call(conf, cni.Request{Command: cni.CmdStatus}); err != nil {
		return err
	}
	return nil
}
