"""The TARS operator: kopf handlers that reconcile TarsReplica and SelfCodingRun objects."""
