"""What the documents say is checked against the code, so it cannot go stale.

Every list a document keeps of something the code defines - modules, drop
reasons, metric names, vswitchctl commands, tests named as proof - is
compared here with the code itself, and every link between the documents
must lead somewhere.
"""

from __future__ import annotations

import ast
import contextlib
import glob
import io
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from vswitch._datapath import DROP_REASONS

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
DOCUMENTS = [ROOT / "README.md", *DOCS]


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _prose(text: str) -> str:
    """The text without its fenced code blocks (commands and examples there
    are not links or claims about the tree)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _section(path: Path, heading: str) -> str:
    """The body of the section `heading` (any level) up to the next heading of
    the same or a higher level."""
    text = path.read_text()
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", text, re.M)
    assert match, f"{_rel(path)} has no section {heading!r}"
    level = len(match.group(1))
    body = text[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", body, re.M)
    return body[:end.start()] if end else body


def _first_column(section: str) -> list[str]:
    """The first backticked text of each table row's first cell."""
    listed = []
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cell = line.split("|")[1]
            found = re.search(r"`([^`]+)`", cell)
            if found:
                listed.append(found.group(1))
    return listed


# --- drop reasons ---------------------------------------------------------------------

def test_the_metrics_document_lists_every_drop_reason_of_the_datapath():
    listed = _first_column(_section(ROOT / "docs" / "metrics.md", "Drop reasons"))
    assert len(listed) == len(set(listed)), "a drop reason is listed twice"
    assert sorted(listed) == sorted(r for r in DROP_REASONS if r)


# --- metrics ------------------------------------------------------------------------------

def _exported_metric_names() -> set[str]:
    """The name of every family the collector exports, as a scrape shows it:
    a counter with `_total`, an info family with `_info`. A switch without
    ports still yields every family (empty), so an empty one will do."""
    from vswitch.api import SwitchAPI
    from vswitch.metrics import SwitchCollector

    dp = SimpleNamespace(fdb_entries=lambda *a, **k: [], fdb_stats=lambda: {},
                         worker_stats=lambda: [])
    switch = SimpleNamespace(ports={}, dp=dp)
    suffix = {"counter": "_total", "info": "_info"}
    return {family.name + suffix.get(family.type, "")
            for family in SwitchCollector(SwitchAPI(switch)).collect()}


def test_the_metrics_document_lists_every_metric_the_collector_exports():
    listed = _first_column(_section(ROOT / "docs" / "metrics.md", "Metric names"))
    assert len(listed) == len(set(listed)), "a metric is listed twice"
    exported = _exported_metric_names()
    assert exported, "the collector exported nothing"
    assert set(listed) == exported


# --- vswitchctl -----------------------------------------------------------------------------

def _command_name(usage: str) -> str:
    """`port show NAME` -> `port show`: the words before the first argument."""
    words = []
    for word in usage.split():
        if not re.fullmatch(r"[a-z][a-z-]*", word):
            break
        words.append(word)
    return " ".join(words)


def _vswitchctl_commands() -> set[str]:
    """The commands `vswitchctl --help` lists (its "commands:" part)."""
    from vswitch import cli

    build = getattr(cli, "build_parser", None)
    if build is not None:
        text = build().format_help()
    else:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.main(["--help"]) == 0
        text = out.getvalue()
    assert "commands:" in text, "vswitchctl --help lists no commands"
    commands = set()
    for line in text[text.index("commands:"):].splitlines()[1:]:
        if re.match(r"  [a-z]", line):           # a command; deeper lines continue one
            usage = re.split(r"\s{2,}", line.strip())[0]     # then its description
            commands.add(_command_name(usage))
    return commands


def test_the_readme_lists_every_vswitchctl_command():
    listed = [_command_name(c) for c in _first_column(_section(ROOT / "README.md", "vswitchctl"))]
    assert len(listed) == len(set(listed)), "a command is listed twice"
    commands = _vswitchctl_commands()
    assert len(commands) > 5
    assert set(listed) == commands


# --- tests named as proof -----------------------------------------------------------------

def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _check_named_tests(document: Path) -> int:
    """`document` maps claims to tests in tables: each file it names exists,
    and each `file::name` is a test function of that file (`...` and `::name`
    continue the file named before them in the same cell). Returns how many
    references it checked."""
    text = document.read_text()
    named = 0
    for cell in re.split(r"\|", text):
        current: Path | None = None
        for ref in re.findall(r"`((?:tests/[\w/]+\.py)?(?:::[\w.\[\]-]+)?)`", cell):
            path, _, name = ref.partition("::")
            if path:
                current = ROOT / path
                assert current.exists(), f"{_rel(document)} names {path}, which does not exist"
            if name:
                assert current is not None, f"::{name} with no file before it"
                function = name.split("[")[0]
                if function.startswith("..."):
                    continue
                assert function in _test_functions(current), f"{current.name} has no test {function}"
            named += 1
    return named


def test_every_test_the_security_document_names_exists():
    assert _check_named_tests(ROOT / "docs" / "security.md") > 20


def test_every_test_the_faults_document_names_exists():
    assert _check_named_tests(ROOT / "docs" / "faults.md") > 20


# --- links and paths ---------------------------------------------------------------------------

def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces
    to hyphens."""
    text = re.sub(r"[`*_]{2,}|`", "", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    for heading in re.findall(r"^#+ (.+?)\s*$", _prose(path.read_text()), re.M):
        slug = base = _slug(heading)
        n = 0
        while slug in anchors:          # repeated headings get -1, -2, ...
            n += 1
            slug = f"{base}-{n}"
        anchors.add(slug)
    return anchors


def test_every_link_of_the_security_document_resolves():
    text = (ROOT / "docs" / "security.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if "://" not in target:
            assert (ROOT / "docs" / target).exists(), target
    for path in re.findall(r"`((?:cython_ext|vswitch|docs)/[\w/.]+)`", text):
        assert (ROOT / path).exists(), path


@pytest.mark.parametrize("document", DOCUMENTS, ids=_rel)
def test_every_link_between_the_documents_resolves(document):
    """Relative links lead to a file of the repository, and a link to a
    section of a document to a heading it has."""
    for target in re.findall(r"\]\(([^)\s]+)\)", _prose(document.read_text())):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        resolved = (document.parent / path).resolve() if path else document
        assert resolved.exists(), f"{_rel(document)}: link to {target}: no such file"
        assert ROOT in resolved.parents or resolved == ROOT, f"{_rel(document)}: {target} leaves the repository"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{_rel(document)}: {target}: no such section"


def _expand_braces(pattern: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    return [expanded for choice in match.group(1).split(",")
            for expanded in _expand_braces(pattern[:match.start()] + choice + pattern[match.end():])]


@pytest.mark.parametrize("document", DOCUMENTS, ids=_rel)
def test_every_path_a_document_names_exists(document):
    """`vswitch/ports/base.py`, `tests/test_policy.py::name`, `bench/results/x-*.json`:
    a path of the repository in backticks names something that is there."""
    top = r"(?:vswitch|cython_ext|tests|bench|config|systemd|docs)/"
    for ref in re.findall(rf"`({top}[\w/.*{{}},-]*)", _prose(document.read_text())):
        path = ref.split("::")[0]
        found = any(glob.glob(str(ROOT / p)) for p in _expand_braces(path))
        assert found, f"{_rel(document)} names {path}, which is not in the repository"


# An issue number of the project's tracker, the design notes and research kept
# beside the repository, the paths of the machine it was written on: a reader
# of the repository alone cannot follow any of them. What they pointed to
# belongs in docs/ (or is a public specification or upstream bug, cited by its
# name or address).
OUTSIDE_POINTERS = (r"\bissue[ -]?#?\d+", r"\bthe issue\b", r"\.\./shared", r"\bdesign\.md\b",
                    r"\bresearch/", r"\banchors\.md\b", r"\banchors §", r"\becosystem\.md\b",
                    r"\bbench\.md\b", r"\bqemu-guests\.md\b", r"/work/")


def _outside_pointers(path: Path) -> list[str]:
    """`path:line: text` of each pointer outside the repository in the file."""
    hits = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        for pattern in OUTSIDE_POINTERS:
            found = re.search(pattern, line, re.I)
            if found:
                hits.append(f"{_rel(path)}:{number}: {found.group(0)!r}")
    return hits


@pytest.mark.parametrize("document", DOCUMENTS, ids=_rel)
def test_no_document_points_outside_the_repository(document):
    """The documents stand alone: no issue numbers of the project's tracker,
    no design notes or research kept elsewhere."""
    hits = _outside_pointers(document)
    assert not hits, f"pointers outside the repository: {hits}"


CODE_TOPS = ("vswitch", "cython_ext", "tests", "bench", "config", "systemd")
CODE_SUFFIXES = {".py", ".pyx", ".pxi", ".pxd", ".h", ".c", ".yaml", ".yml", ".json", ".toml",
                 ".service", ".sh", ".md", ".txt", ".cfg"}


def _code_files() -> list[Path]:
    """Every text file of the code, its tests, benchmarks, config and unit:
    sources by hand only (not Cython's .c), and not bench/results, whose
    records keep the paths of the machine that measured them."""
    files = [ROOT / name for name in ("Makefile", "setup.py", "pyproject.toml") if (ROOT / name).exists()]
    for top in CODE_TOPS:
        for path in sorted((ROOT / top).rglob("*")):
            parts = path.relative_to(ROOT).parts
            if (not path.is_file() or path.suffix not in CODE_SUFFIXES or "__pycache__" in parts
                    or parts[:2] == ("bench", "results")
                    or (path.suffix == ".c" and path.with_suffix(".pyx").exists())):
                continue
            if path == Path(__file__).resolve():       # the patterns themselves
                continue
            files.append(path)
    return files


def test_no_code_file_points_outside_the_repository():
    """Comments, docstrings and help texts follow the same rule as the
    documents: they point to docs/ (or to a public specification), never to
    an issue number or to notes outside the repository."""
    files = _code_files()
    assert len(files) > 100
    hits = [hit for path in files for hit in _outside_pointers(path)]
    assert not hits, "pointers outside the repository:\n" + "\n".join(hits)


# --- the module map ------------------------------------------------------------------------------

SOURCE_SUFFIXES = {".py", ".pyx", ".pxi", ".pxd", ".h"}


def _module_map() -> list[str]:
    """docs/architecture.md, "Module map": lines of the form
    * `path` — what it is."""
    section = _section(ROOT / "docs" / "architecture.md", "Module map")
    return re.findall(r"^[*-] `([^`]+)` — \S", section, re.M)


def _source_files() -> set[str]:
    """Every source file of the switch, generated ones (.c, .so) excepted.
    Package `__init__.py` files count: a package's public face (what it
    re-exports) lives there."""
    found = set()
    for top in ("vswitch", "cython_ext"):
        for path in (ROOT / top).rglob("*"):
            if path.suffix in SOURCE_SUFFIXES and path.is_file() and "__pycache__" not in path.parts:
                found.add(_rel(path))
    return found


def test_the_module_map_lists_every_source_file_once():
    listed = _module_map()
    assert len(listed) == len(set(listed)), "a module is listed twice"
    missing = _source_files() - set(listed)
    assert not missing, f"docs/architecture.md, Module map: not listed: {sorted(missing)}"


def test_every_module_in_the_map_exists():
    listed = _module_map()
    assert len(listed) > 20
    gone = [path for path in listed if not (ROOT / path).is_file()]
    assert not gone, f"docs/architecture.md, Module map: no such file: {gone}"
