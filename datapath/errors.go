// SPDX-License-Identifier: Apache-2.0

package datapath

import "errors"

// ErrPortTaken is wrapped by the errors that refuse a published port
// because its host port and protocol are bound already, by another
// container or by a process of the host: callers tell a taken port from
// a bad request with errors.Is, not by the message.
var ErrPortTaken = errors.New("host port already published")
