"""The `security` section and the `debug` switch: validator, JSON Schema, reload plan."""

from __future__ import annotations

import pytest
import yaml

from tests.harness.schema import SCHEMA, doc, schema_errors, validator_errors
from vswitch.config import validate
from vswitch import reconcile
from vswitch.config import SecurityConfig, parse_config


def test_defaults_confine_and_hide_debug_commands() -> None:
    config = parse_config("ports: {}\n", check_host=False)
    assert config.security == SecurityConfig(seccomp=True)
    assert config.debug is False
    # files without the keys round-trip unchanged
    assert "security" not in config.to_dict() and "debug" not in config.to_dict()


def test_set_and_round_trip() -> None:
    config = parse_config("security: {seccomp: false}\ndebug: true\nports: {}\n", check_host=False)
    assert config.security.seccomp is False and config.debug is True
    again = parse_config(yaml.safe_dump(config.to_dict()), check_host=False)
    assert again == config


GOOD = {
    "empty-security": "security: {}\nports: {}\n",
    "seccomp-on": "security: {seccomp: true}\ndebug: false\nports: {}\n",
    "seccomp-off": "security:\n  seccomp: false\nports: {}\n",
}

BAD = {
    "seccomp-int": ("security: {seccomp: 1}\nports: {}\n",
                    "c.yaml:1:21: security.seccomp: must be true or false (got integer 1)"),
    "seccomp-string": ("security: {seccomp: 'on'}\nports: {}\n",
                       "c.yaml:1:21: security.seccomp: must be true or false (got string 'on')"),
    "seccomp-typo": ("security: {secomp: false}\nports: {}\n",
                     "c.yaml:1:12: security.secomp: unknown key 'secomp', did you mean 'seccomp'? "
                     "(expected one of: seccomp)"),
    "security-list": ("security: [seccomp]\nports: {}\n",
                      "c.yaml:1:11: security: must be a mapping (got a list)"),
    "debug-string": ("debug: 'yes'\nports: {}\n",
                     "c.yaml:1:8: debug: must be true or false (got string 'yes')"),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_both_accept(name: str) -> None:
    assert schema_errors(GOOD[name]) == []
    assert validator_errors(GOOD[name]) == []


@pytest.mark.parametrize("name", sorted(BAD))
def test_both_reject_with_a_positioned_message(name: str) -> None:
    text, message = BAD[name]
    assert schema_errors(text) != [], "schema accepts it"
    assert validator_errors(text) == [message]


def test_schema_knows_the_keys() -> None:
    props = SCHEMA["properties"]
    assert set(props["security"]["properties"]) == set(validate._SECURITY_KEYS)
    assert props["security"]["properties"]["seccomp"]["default"] is True
    assert props["debug"]["default"] is False


def _config(text: str):
    return parse_config(doc(text), check_host=False)


def test_reload_says_seccomp_waits_for_the_next_start_and_debug_does_not() -> None:
    old = _config("ports: {}\n")
    plan = reconcile.plan(old, _config("security: {seccomp: false}\nports: {}\n"))
    assert plan.errors == []
    assert plan.warnings == ["security.seccomp: true -> false takes effect at the next start "
                             "of the daemon"]
    plan = reconcile.plan(old, _config("debug: true\nports: {}\n"))
    assert plan.errors == [] and plan.warnings == []
