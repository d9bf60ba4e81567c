"""CustomResourceDefinitions generated from the API models.

`python -m tars_api.crdgen DIR` (what `make crds` runs) writes one YAML file per kind;
`crd_manifests()` gives the same documents as dicts, for installing them at runtime.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel

from tars_api.meta import GROUP, VERSION, ApiObject
from tars_api.names import LABEL_PART_OF, PART_OF
from tars_api.replica import TarsReplica
from tars_api.run import SelfCodingRun
from tars_api.schema import JsonSchema, structural_schema

KINDS: tuple[type[ApiObject], ...] = (TarsReplica, SelfCodingRun)
HEADER = (
    "# Generated from the API models in operator/tars_api; do not edit.\n"
    "# Run `make crds` (python -m tars_api.crdgen crds) after changing the models.\n"
)


def _field_model(kind: type[ApiObject], field: str) -> type[BaseModel]:
    """The model of `kind.<field>`, looking through `| None`."""
    annotation = kind.model_fields[field].annotation
    candidates = get_args(annotation) or (annotation,)
    return next(c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel))


def openapi_schema(kind: type[ApiObject]) -> JsonSchema:
    """The whole object's schema; metadata is left to the API server, as it must be."""
    name = kind.resource.kind
    spec = structural_schema(_field_model(kind, "spec"))
    status = structural_schema(_field_model(kind, "status"))
    return {
        "description": " ".join((kind.__doc__ or name).split()),
        "properties": {
            "apiVersion": {"description": "Versioned schema of this object", "type": "string"},
            "kind": {"description": "REST resource this object represents", "type": "string"},
            "metadata": {"type": "object"},
            "spec": _described(spec, f"Desired state of the {name}"),
            "status": _described(status, f"Observed state of the {name}, written by the operator"),
        },
        "required": ["spec"],
        "type": "object",
    }


def _described(schema: JsonSchema, description: str) -> JsonSchema:
    return dict(sorted({**schema, "description": description}.items()))


def crd_manifest(kind: type[ApiObject]) -> dict[str, Any]:
    resource = kind.resource
    subresources: dict[str, Any] = {"status": {}}
    if resource.scale is not None:
        subresources["scale"] = {
            "specReplicasPath": resource.scale.spec_replicas_path,
            "statusReplicasPath": resource.scale.status_replicas_path,
            "labelSelectorPath": resource.scale.label_selector_path,
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": resource.crd_name,
            "labels": {LABEL_PART_OF: PART_OF},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": resource.kind,
                "listKind": resource.list_kind,
                "plural": resource.plural,
                "singular": resource.singular,
                "shortNames": list(resource.short_names),
                "categories": list(resource.categories),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": [
                        column.to_crd() for column in resource.printer_columns
                    ],
                    "schema": {"openAPIV3Schema": openapi_schema(kind)},
                }
            ],
        },
    }


def crd_manifests() -> list[dict[str, Any]]:
    """Every CRD of the API, in a stable order."""
    return [crd_manifest(kind) for kind in KINDS]


def crd_file_name(manifest: dict[str, Any]) -> str:
    return f"{manifest['spec']['group']}_{manifest['spec']['names']['plural']}.yaml"


def render(manifest: dict[str, Any]) -> str:
    return (
        HEADER + "---\n" + yaml.safe_dump(manifest, sort_keys=False, width=120, allow_unicode=True)
    )


def write_crds(directory: Path) -> list[Path]:
    """Write every CRD into `directory`; each file is replaced whole, never half-written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for manifest in crd_manifests():
        path = directory / crd_file_name(manifest)
        partial = path.with_name(f".{path.name}.tmp")
        partial.write_text(render(manifest), encoding="utf-8")
        partial.replace(path)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tars_api.crdgen", description=__doc__.splitlines()[0]
    )
    parser.add_argument("directory", type=Path, help="where to write the CRD YAML files")
    arguments = parser.parse_args(argv)
    for path in write_crds(arguments.directory):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
