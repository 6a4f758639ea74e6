"""Validate a manifest against the package's JSON Schema (jsonschema is a test dependency, not the package's)."""
from __future__ import annotations

import json

import jsonschema

from lrformer_deploy.manifest import SCHEMA_PATH


def validate_manifest(manifest: dict) -> None:
    jsonschema.validate(manifest, json.loads(SCHEMA_PATH.read_text()))
