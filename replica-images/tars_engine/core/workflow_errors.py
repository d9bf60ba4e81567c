"""The error a run ends with when it cannot start or cannot go on.

It sits below the workflow, its role pool and its test gate, so that each of them
can raise it and callers catch one type.
"""

from __future__ import annotations


class WorkflowError(RuntimeError):
    """The run cannot start or cannot go on; the message says why in one line."""
