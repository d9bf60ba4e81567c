"""TARS Self-Coding API types (group tars.dev, version v1alpha1): the single source of truth for the CRDs.

Python attributes are snake_case, the wire is camelCase: `TarsReplica.model_validate(obj)`
reads a Kubernetes dict, `.to_k8s()` writes a manifest, `.to_dict()` any part of one.
The CRDs themselves come from `tars_api.crdgen.crd_manifests()`.

Import the modules (`tars_api.run`, `tars_api.replica`, `tars_api.meta`, ...), not the
package: it re-exports nothing, so that reading `tars_api.vocabulary` or `tars_api.names`
does not build every model (a short command's start-up time).
"""
