// SPDX-License-Identifier: Apache-2.0

package cni

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// The plugin's requests, one per connection to the agent's socket: a
// Request as JSON, answered by a Response as JSON.
const (
	CmdAdd    = "ADD"
	CmdDel    = "DEL"
	CmdCheck  = "CHECK"
	CmdGC     = "GC"
	CmdStatus = "STATUS"
)

// Request is what the plugin asks.
type Request struct {
	Command string `json:"command"`
	// Attachment is ADD's and CHECK's; DEL reads its Key alone (and
	// Network).
	Attachment Attachment `json:"attachment"`
	// Valid is GC's cni.dev/valid-attachments; GC removes the other
	// attachments of Attachment.Network. GC refuses null: say [] for
	// none.
	Valid []Key `json:"valid"`
	// PinPath is the conflist's pinPath: when set, the agent refuses to
	// serve a network configured for another datapath.
	PinPath string `json:"pinPath,omitempty"`
}

// Response is the agent's answer: no Error is success.
type Response struct {
	Error *Error `json:"error,omitempty"`
	// Removed are the attachments GC removed.
	Removed []Key `json:"removed,omitempty"`
}

// Error is a CNI error (SPEC.md "Error"): the plugin prints it as it is.
type Error struct {
	Code    uint   `json:"code"`
	Msg     string `json:"msg"`
	Details string `json:"details,omitempty"`
}

func (e *Error) Error() string {
	if e.Details != "" {
		return e.Msg + ": " + e.Details
	}
	return e.Msg
}

// CNI error codes the agent answers with (SPEC.md "Error"), and
// bpfnet's own, from 100 as the spec reserves them for plugins.
const (
	CodeIOFailure          = 5
	CodeDecodingFailure    = 6
	CodeInvalidConfig      = 7
	CodeTryAgainLater      = 11
	CodePluginNotAvailable = 50
	// CodePortTaken: a host port asked for is already mapped.
	CodePortTaken = 100
	// CodeNotServed: CHECK found the attachment missing or different.
	CodeNotServed = 101
	// CodeApply: the datapath refused the state with the attachment.
	CodeApply = 102
	// CodeNotPermitted: the connecting user may not use the agent.
	CodeNotPermitted = 103
)

// Call sends req to the agent at socket and reads its answer. An agent
// that cannot be reached is an error of code CodePluginNotAvailable.
func Call(ctx context.Context, socket string, req Request) (Response, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return Response{}, &Error{Code: CodePluginNotAvailable, Msg: "the bpfnet agent does not answer (is `bpfnet run --cni` running?)", Details: err.Error()}
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	} else {
		c.SetDeadline(time.Now().Add(2 * time.Minute))
	}
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return Response{}, &Error{Code: CodeTryAgainLater, Msg: "sending the request to the bpfnet agent", Details: err.Error()}
	}
	var resp Response
	if err := json.NewDecoder(c).Decode(&resp); err != nil {
		return Response{}, &Error{Code: CodeTryAgainLater, Msg: "reading the bpfnet agent's answer", Details: err.Error()}
	}
	if resp.Error != nil {
		return resp, resp.Error
	}
	return resp, nil
}

func errorf(code uint, format string, a ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, a...)}
}
