package datapath

import "github.com/bpfnet/bpfnet/lab"

// requireRoot: see lab.RequireRoot.
var requireRoot = lab.RequireRoot
