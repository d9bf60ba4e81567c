"""TARS Self-Coding API types (group tars.dev, version v1alpha1): the single source of truth for the CRDs."""
