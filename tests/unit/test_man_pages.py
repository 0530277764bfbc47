"""The manual pages (man/) render cleanly and name everything the code
defines for an operator: every vswitchd option, every vswitchctl command and
option, every key of the configuration file. A new option, command or key
without its line in the page fails here, so the pages cannot go stale."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from vswitch.cli import CLI_COMMANDS, main_parser
from vswitch.daemon import argument_parser

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "man"
PAGES = {"vswitchd": MAN / "vswitchd.8", "vswitchctl": MAN / "vswitchctl.8",
         "vswitch.yaml": MAN / "vswitch.yaml.5"}


def render(page: Path) -> str:
    """The page as a terminal shows it, plain ASCII (no bold or underline),
    with groff's warnings (-ww) failing the render."""
    proc = subprocess.run(["groff", "-man", "-ww", "-Tascii", "-P-cbou", str(page)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and not proc.stderr.strip(), (page.name, proc.stderr)
    # joined lines: a hyphenated word or an option may wrap
    return re.sub(r"-\n\s*", "-", proc.stdout)


@pytest.mark.parametrize("name", sorted(PAGES))
def test_page_renders_without_warnings_and_names_itself(name):
    text = render(PAGES[name])
    section = PAGES[name].suffix.lstrip(".")
    assert f"{name.upper()}({section})" in text
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"):
        assert re.search(rf"^{heading}$", text, re.M), (name, heading)


def _options(parser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings}


def test_vswitchd_page_documents_every_option():
    text = render(PAGES["vswitchd"])
    missing = sorted(opt for opt in _options(argument_parser()) if opt not in text)
    assert not missing, f"man/vswitchd.8 lacks {missing}"
    for status in ("0", "1", "2", "6"):
        assert re.search(rf"^\s+{status}\b", text, re.M), f"exit status {status}"


def test_vswitchctl_page_documents_every_command_and_option():
    text = render(PAGES["vswitchctl"])
    missing = sorted(opt for opt in _options(main_parser()) if opt not in text)
    for command in CLI_COMMANDS:
        if command.debug:
            continue            # test systems only (`debug: true`), kept out of the help too
        if command.name not in text:
            missing.append(command.name)
        for arg in command.args:
            if not arg.positional and arg.option not in text:
                missing.append(f"{command.name} {arg.option}")
    assert not missing, f"man/vswitchctl.8 lacks {missing}"


def _schema_keys(node, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "properties":
                out.update(value)
            _schema_keys(value, out)
    elif isinstance(node, list):
        for value in node:
            _schema_keys(value, out)
    return out


def test_config_page_documents_every_key_of_the_schema():
    text = render(PAGES["vswitch.yaml"])
    schema = json.loads((ROOT / "config" / "vswitch.schema.json").read_text())
    keys = _schema_keys(schema, set())
    assert len(keys) > 50            # the walk found the schema's keys
    missing = sorted(k for k in keys if not re.search(rf"(?<![\w-]){re.escape(k)}(?![\w-])", text))
    assert not missing, f"man/vswitch.yaml.5 lacks {missing}"
