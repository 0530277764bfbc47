"""A config text judged twice: by config/vswitch.schema.json (JSON Schema
Draft 2020-12, on the document as PyYAML's safe_load reads it, the way
vswitchd reads it) and by vswitch.config's validator. The config tests check
that the two agree."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator

from vswitch.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = ROOT / "config" / "vswitch.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA)


def doc(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def schema_errors(text: str) -> list[str]:
    return [e.message for e in VALIDATOR.iter_errors(yaml.safe_load(text))]


def validator_errors(text: str, check_host: bool = False) -> list[str]:
    try:
        parse_config(text, "c.yaml", check_host=check_host)
    except ConfigError as exc:
        return [str(issue) for issue in exc.errors]
    return []
