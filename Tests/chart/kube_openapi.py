"""Validates Kubernetes objects against the OpenAPI v3 documents a real
kube-apiserver serves (Tests/Fixtures/openapi), strictly: an unknown field is an
error (as `kubectl apply --validate=strict` and server-side field validation make
it), as are a wrong type, a missing required field and a value outside an enum."""
import copy
import glob
import json
import os

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SCHEMA_PREFIX = "#/components/schemas/"


def _strict(node):
    """Closes every object schema that lists its properties, recursively."""
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        if node.get("x-kubernetes-int-or-string") and "type" not in node and "oneOf" not in node:
            node["type"] = ["integer", "string"]
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)
    return node


class KubeOpenAPI:
    def __init__(self, directory):
        self.schemas = {}
        self.by_gvk = {}
        paths = sorted(glob.glob(os.path.join(directory, "*.json")))
        if not paths:
            raise FileNotFoundError(f"no OpenAPI documents in {directory}")
        for path in paths:
            with open(path, encoding="utf-8") as f:
                document = json.load(f)
            for name, schema in document["components"]["schemas"].items():
                self.schemas.setdefault(name, schema)
                for gvk in schema.get("x-kubernetes-group-version-kind", []):
                    api_version = gvk["version"] if not gvk["group"] else f"{gvk['group']}/{gvk['version']}"
                    self.by_gvk.setdefault((api_version, gvk["kind"]), name)
        root = {"components": {"schemas": _strict(copy.deepcopy(self.schemas))}}
        self.registry = Registry().with_resource("urn:kube", Resource(contents=root, specification=DRAFT202012))

    def errors(self, obj):
        """Messages for everything wrong with `obj`, empty when it is valid."""
        key = (obj.get("apiVersion"), obj.get("kind"))
        name = self.by_gvk.get(key)
        if name is None:
            return [f"{key[1]} {key[0]}: no such kind in the API server's OpenAPI documents"]
        schema = {"$ref": f"urn:kube{SCHEMA_PREFIX}{name}"}
        validator = jsonschema.Draft202012Validator(schema, registry=self.registry)
        found = []
        for error in validator.iter_errors(obj):
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            # oneOf/anyOf errors: show the closest reason.
            detail = error.message
            if error.context:
                best = jsonschema.exceptions.best_match(error.context)
                detail = f"{best.message}"
            found.append(f"{obj['kind']}/{obj.get('metadata', {}).get('name', '?')}: {where}: {detail}")
        return found
