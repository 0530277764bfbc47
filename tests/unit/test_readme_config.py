"""The README's example configuration is valid as written on this host,
whose groups it must not assume (a fresh host has no `vswitch` or
`libvirt-qemu` group), and says the same as the shipped config/vswitch.yaml."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from vswitch import cli
from vswitch.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    examples = [b for b in blocks if b.startswith("# config/vswitch.yaml")]
    assert len(examples) == 1, "the README's example configuration block is gone"
    return examples[0]


def test_readme_example_passes_config_check_and_needs_no_group(tmp_path, capsys) -> None:
    path = tmp_path / "vswitch.yaml"
    path.write_text(readme_example())
    assert cli.main(["config", "check", str(path)]) == 0, capsys.readouterr().err
    data = yaml.safe_load(path.read_text())
    assert "group" not in (data.get("control") or {})
    for section in (data.get("defaults") or {}, *data["ports"].values()):
        assert "socket_group" not in section and "socket_owner" not in section
    # the group lines are there, commented, for whoever needs them
    assert "# socket_group: libvirt-qemu" in path.read_text()
    assert "#   group: vswitch" in path.read_text()


def test_readme_example_is_the_shipped_config(tmp_path) -> None:
    path = tmp_path / "vswitch.yaml"
    path.write_text(readme_example())
    readme = load_config(path, check_host=False).to_dict()
    shipped = load_config(ROOT / "config" / "vswitch.yaml", check_host=False).to_dict()
    assert readme == shipped
