#!/usr/bin/env python3
"""Validates Kubernetes manifests offline, every document of every file given.

Usage: validate-manifests.py [-k VERSION] FILE...

- Built-in kinds: kubernetes-validate (PyPI), strict (unknown fields are errors), against the
  Kubernetes OpenAPI schemas of VERSION (default 1.33.0, the API that k8s-openapi's v1_33
  feature gives causeway).
- Instances of a CustomResourceDefinition found among the same files (our ServiceExport and
  ServiceImport): JSON Schema validation against that CRD's openAPIV3Schema for the object's
  version (nullable honoured; x-kubernetes-* extensions are not checked).
- ServiceMonitor (monitoring.coreos.com/v1): skipped, on purpose. Its CRD belongs to the
  Prometheus operator; its schema is neither in kubernetes-validate nor ours to generate.
- Any other kind: a failure (there is no schema to validate it against).

Prints one line per document and exits 1 if any document failed.
"""

import argparse
import copy
import sys

import jsonschema
import kubernetes_validate
import yaml

SKIPPED = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "Prometheus operator CRD, schema not bundled",
}


def to_json_schema(schema):
    """An OpenAPI v3 structural schema as JSON Schema: `nullable: true` allows null."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if node.pop("nullable", False) and "type" in node:
                node["type"] = [node["type"], "null"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def crd_schemas(documents):
    """(apiVersion, kind) -> JSON Schema, for every CRD version among the documents."""
    schemas = {}
    for doc in documents:
        if doc.get("kind") != "CustomResourceDefinition":
            continue
        spec = doc["spec"]
        for version in spec["versions"]:
            api_version = f"{spec['group']}/{version['name']}"
            schema = version["schema"]["openAPIV3Schema"]
            schemas[(api_version, spec["names"]["kind"])] = to_json_schema(schema)
    return schemas


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-k", "--kubernetes-version", default="1.33.0")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()

    documents = []
    for path in args.files:
        with open(path, encoding="utf-8") as f:
            for doc in yaml.safe_load_all(f):
                if doc is not None:
                    documents.append((path, doc))
    schemas = crd_schemas(doc for _, doc in documents)

    passed = failed = skipped = 0
    for path, doc in documents:
        key = (doc.get("apiVersion"), doc.get("kind"))
        name = f"{key[1]}/{doc.get('metadata', {}).get('name')} ({path})"
        try:
            if key in SKIPPED:
                print(f"skipped {name}: {SKIPPED[key]}")
                skipped += 1
                continue
            if key in schemas:
                jsonschema.validate(doc, schemas[key])
            else:
                kubernetes_validate.validate(doc, args.kubernetes_version, strict=True)
            print(f"ok      {name}")
            passed += 1
        except kubernetes_validate.SchemaNotFoundError:
            print(f"FAILED  {name}: no schema for {key[0]} {key[1]}")
            failed += 1
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as e:
            message = getattr(e, "message", str(e)).splitlines()[0]
            print(f"FAILED  {name}: {message}")
            failed += 1
    print(f"validated {len(documents)} documents: {passed} valid, {failed} invalid, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
