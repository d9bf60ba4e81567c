"""The roles' own work: analysis (ruff, metrics, model review), generation (static fixes
and the Ollama engine) and testing. Each role is a plain class, reached in-process or
over HTTP through the transports above it."""
