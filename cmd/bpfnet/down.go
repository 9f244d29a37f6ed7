// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/bpfnet/bpfnet/datapath"
	"github.com/bpfnet/bpfnet/loader"
)

func newDownCmd() *cobra.Command {
	var pinPath string
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Detach the datapath everywhere and remove its pinned state",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := os.Stat(pinPath); os.IsNotExist(err) {
				fmt.Fprintf(cmd.OutOrStdout(), "nothing pinned at %s\n", pinPath)
				return nil
			}
			if _, err := os.Stat(iptablesMarker(pinPath)); err == nil {
				dp, err := datapath.NewIptables(datapath.IptablesOptions{})
				if err == nil {
					err = dp.Remove()
				}
				if err != nil {
					return fmt.Errorf("removing the iptables rules: %w", err)
				}
			}
			if err := loader.DetachAll(pinPath); err != nil {
				return err
			}
			// The cgroup links (sock_addr and the containers'): detached,
			// not only unpinned, so that no holder keeps them attached.
			if err := loader.DetachTree(loader.CgroupDir(pinPath)); err != nil {
				return err
			}
			if err := os.RemoveAll(pinPath); err != nil {
				return fmt.Errorf("removing %s: %w", pinPath, err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "detached and removed %s\n", pinPath)
			return nil
		},
	}
	cmd.Flags().StringVar(&pinPath, "pin-path", defaultPinPath, "bpffs folder of the datapath's state")
	return cmd
}
