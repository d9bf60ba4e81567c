"""The `tarscli` commands, a module per command group; tarscli.app puts them together.

A command parses its options and calls the rest: tarscli.cluster_ops and tarscli.kube for
the cluster, tarscli.local_ops for runs on this machine, tarscli.views for what it shows.
Options shared by several commands are declared in tarscli.options.
"""
