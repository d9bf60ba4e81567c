"""What faces the cluster: endpoint discovery, run sources (git, upload, volume), and the
coordinator's run API and service, which the operator drives through `tars_engine.contract`."""
