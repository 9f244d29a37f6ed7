// Package metrics will serve bpfnet's Prometheus /metrics: per-container
// traffic and datapath health read from the BPF maps at scrape time.
package metrics
