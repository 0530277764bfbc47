"""What the documents say is checked against the code, so it cannot go stale."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from vswitch._datapath import DROP_REASONS

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_lists_every_drop_reason_of_the_datapath():
    text = (ROOT / "README.md").read_text()
    paragraph = text[text.index("Drop reasons:"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    listed = re.findall(r"`([a-z_0-9]+)`", paragraph)
    assert sorted(listed) == sorted(r for r in DROP_REASONS if r)


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def test_every_test_the_security_document_names_exists():
    """docs/security.md maps each guarantee to its test: each file it names
    exists, and each `file::name` is a test function of that file (`...`
    and `::name` continue the file named before them in the same cell)."""
    text = (ROOT / "docs" / "security.md").read_text()
    named = 0
    for cell in re.split(r"\|", text):
        current: Path | None = None
        for ref in re.findall(r"`((?:tests/[\w/]+\.py)?(?:::[\w.\[\]-]+)?)`", cell):
            path, _, name = ref.partition("::")
            if path:
                current = ROOT / path
                assert current.exists(), f"docs/security.md names {path}, which does not exist"
            if name:
                assert current is not None, f"::{name} with no file before it"
                function = name.split("[")[0]
                if function.startswith("..."):
                    continue
                assert function in _test_functions(current), f"{current.name} has no test {function}"
            named += 1
    assert named > 20


def test_every_link_of_the_security_document_resolves():
    text = (ROOT / "docs" / "security.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" not in target:
            assert (ROOT / "docs" / target).exists(), target
    for path in re.findall(r"`((?:cython_ext|vswitch|docs)/[\w/.]+)`", text):
        assert (ROOT / path).exists(), path
