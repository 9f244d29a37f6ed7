// SPDX-License-Identifier: Apache-2.0

package datapath

import "github.com/bpfnet/bpfnet/lab"

// requireRoot: see lab.RequireRoot.
var requireRoot = lab.RequireRoot
