"""The engine's bottom layer: wire models, run state and budgets, diffs and snapshots,
file selection, candidate validation, the learning store, and the workflow that drives
the roles through the `RoleSet` protocol without knowing how they are reached."""
