"""The TARS operator: kopf handlers that reconcile TarsReplica and SelfCodingRun objects."""

from importlib.metadata import version

__version__ = version("tars-selfcoding")
