"""Pydantic JSON Schema -> structural OpenAPI v3 schema, as apiextensions.k8s.io/v1 requires.

Pydantic writes JSON Schema 2020-12: `$ref`s into `$defs`, `anyOf [X, null]` for optional
fields, titles, `exclusiveMinimum` as a number. A CRD needs every node to carry its own
type, no references, no nulls, and Kubernetes' own markers (int-or-string,
preserve-unknown-fields). The conversion is mechanical; the models decide everything.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

JsonSchema = dict[str, Any]

_REF_PREFIX = "#/$defs/"
# Keys of JSON Schema that OpenAPI v3 in a CRD either forbids or that carry no meaning there.
_DROPPED_KEYS = frozenset(
    {"title", "examples", "$schema", "$id", "discriminator", "readOnly", "writeOnly"}
)
_INT_OR_STRING = frozenset({"integer", "string"})


class SchemaError(ValueError):
    """The model uses a construct a structural schema cannot express."""


def structural_schema(model: type[BaseModel]) -> JsonSchema:
    """The structural OpenAPI v3 schema of `model` (by alias, validation mode)."""
    raw = model.model_json_schema(
        by_alias=True, mode="validation", ref_template=_REF_PREFIX + "{model}"
    )
    definitions: dict[str, JsonSchema] = raw.pop("$defs", {})
    return _convert(raw, definitions, path=model.__name__)


def _resolve(node: JsonSchema, definitions: dict[str, JsonSchema], path: str) -> JsonSchema:
    """Inline `$ref` and single-member `allOf`, merging sibling keywords over the target."""
    if "$ref" in node:
        reference = node["$ref"]
        if not reference.startswith(_REF_PREFIX):
            raise SchemaError(f"{path}: unsupported reference {reference}")
        siblings = {key: value for key, value in node.items() if key != "$ref"}
        target = definitions[reference.removeprefix(_REF_PREFIX)]
        return _merge(_resolve(dict(target), definitions, path), siblings)
    if "allOf" in node:
        members = node["allOf"]
        if len(members) != 1:
            raise SchemaError(f"{path}: allOf with {len(members)} members")
        siblings = {key: value for key, value in node.items() if key != "allOf"}
        return _merge(_resolve(dict(members[0]), definitions, path), siblings)
    return node


def _merge(base: JsonSchema, overlay: JsonSchema) -> JsonSchema:
    merged = dict(base)
    for key, value in overlay.items():
        if key == "x-kubernetes-validations":
            merged[key] = [*base.get(key, []), *value]
        else:
            merged[key] = value
    return merged


def _without_null(node: JsonSchema, path: str) -> JsonSchema:
    """`anyOf [X, {type: null}]` (an optional field) becomes X; the field is simply omitted."""
    members = node.get("anyOf")
    if members is None:
        return node
    kept = [member for member in members if member.get("type") != "null"]
    if len(kept) == len(members):
        return node
    siblings = {key: value for key, value in node.items() if key != "anyOf"}
    if len(kept) == 1:
        return _merge(kept[0], siblings)
    return {**siblings, "anyOf": kept}


def _int_or_string(
    node: JsonSchema, definitions: dict[str, JsonSchema], path: str
) -> JsonSchema | None:
    members = node.get("anyOf")
    if members is None:
        return None
    resolved = [_resolve(dict(member), definitions, path) for member in members]
    if {member.get("type") for member in resolved} != _INT_OR_STRING or len(resolved) != 2:
        return None
    siblings = {key: value for key, value in node.items() if key != "anyOf"}
    result: JsonSchema = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    for member in resolved:
        for key in ("pattern", "maxLength", "minLength", "minimum", "maximum"):
            if key in member:
                result[key] = member[key]
    result["x-kubernetes-int-or-string"] = True
    return _merge(result, siblings)


def _convert(node: JsonSchema, definitions: dict[str, JsonSchema], path: str) -> JsonSchema:
    node = _resolve(dict(node), definitions, path)
    node = _resolve(_without_null(node, path), definitions, path)
    int_or_string = _int_or_string(node, definitions, path)
    if int_or_string is not None:
        return _clean(int_or_string, path)
    if "anyOf" in node or "oneOf" in node:
        raise SchemaError(f"{path}: a union other than optional or int-or-string is not structural")
    node = _clean(node, path)

    if node.get("x-kubernetes-preserve-unknown-fields"):
        node.pop("additionalProperties", None)
        return node
    if "properties" in node:
        node["properties"] = {
            name: _convert(child, definitions, f"{path}.{name}")
            for name, child in node["properties"].items()
        }
        node.pop("additionalProperties", None)
    elif isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _convert(
            node["additionalProperties"], definitions, f"{path}[*]"
        )
    elif "additionalProperties" in node:
        # `true` would need preserve-unknown-fields, `false` is the structural default.
        if node["additionalProperties"] is True:
            raise SchemaError(f"{path}: free-form object; annotate it with PreserveUnknownFields")
        del node["additionalProperties"]
    if "items" in node:
        node["items"] = _convert(node["items"], definitions, f"{path}[]")
    if "type" not in node:
        raise SchemaError(f"{path}: no type")
    return node


def _clean(node: JsonSchema, path: str) -> JsonSchema:
    cleaned = {key: value for key, value in node.items() if key not in _DROPPED_KEYS}
    if "default" in cleaned and cleaned["default"] is None:
        del cleaned["default"]
    if "const" in cleaned:
        cleaned["enum"] = [cleaned.pop("const")]
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = cleaned.get(bound)
        if isinstance(value, int | float) and not isinstance(value, bool):
            cleaned[inclusive] = value
            cleaned[bound] = True
    if "required" in cleaned and not cleaned["required"]:
        del cleaned["required"]
    if "description" in cleaned:
        cleaned["description"] = " ".join(cleaned["description"].split())
    # Keywords in alphabetical order (properties keep the models' field order) for a stable,
    # readable file whatever order pydantic and the annotations produced them in.
    return dict(sorted(cleaned.items()))
