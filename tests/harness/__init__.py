"""The test harness: the local control plane, the node that runs pods as containers, and the
helpers the test directories share. Tests import it as `tests.harness.<module>`; `make dev-up`
runs `python -m tests.harness.controlplane`."""
