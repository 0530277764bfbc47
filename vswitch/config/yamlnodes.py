"""Reading a configuration as a YAML node tree, with the line and column of
every value, and the error type that carries them.

The file is composed into a YAML node tree (not loaded into Python objects
directly) so that every problem can be reported with the line and column of
the offending node, as ``FILE:LINE:COL: dotted.key: message (got X)``, so
that duplicate keys can be detected (PyYAML silently keeps the last one),
and so that all problems are reported at once.  Scalars are converted with
PyYAML's SafeConstructor (YAML 1.1), so ``2`` is an int, ``"2"`` is a
string, ``true`` is a bool and ``0660`` is the octal int 432; only real ints
are accepted where an integer is expected.

NodeReader holds the checks that know nothing of vswitch (a mapping without
duplicate keys, an integer in a range, one of some strings, ...); the
validator (validate.py) builds the schema from them.
"""

from __future__ import annotations

import difflib
import posixpath
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

NULL_TAG = "tag:yaml.org,2002:null"
MERGE_TAG = "tag:yaml.org,2002:merge"


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a configuration file.

    ``line`` and ``col`` are 1-based; both are 0 when there is no position
    (e.g. the file could not be read).  ``key`` is the dotted path of the
    offending setting (``ports.vm1.queues``), "" for the document itself.
    """

    file: str
    line: int
    col: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line > 0 else self.file
        if self.key:
            return f"{where}: {self.key}: {self.message}"
        return f"{where}: {self.message}"


class ConfigError(Exception):
    """The configuration is invalid; ``errors`` lists every problem found."""

    def __init__(self, errors: list[ConfigIssue]) -> None:
        self.errors: list[ConfigIssue] = list(errors)
        super().__init__("\n".join(str(issue) for issue in self.errors))

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.errors)


# --------------------------------------------------------------------------


def yaml_error_issue(exc: yaml.YAMLError, text: str, filename: str) -> ConfigIssue:
    """Turn a PyYAML syntax error into a positioned issue."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        parts = []
        if exc.context:
            context = exc.context
            cm = exc.context_mark
            if cm is not None and (mark is None or (cm.line, cm.column) != (mark.line, mark.column)):
                context += f" (line {cm.line + 1}, column {cm.column + 1})"
            parts.append(context)
        if exc.problem:
            parts.append(exc.problem)
        message = "invalid YAML: " + (", ".join(parts) or "syntax error")
        if mark is None:
            return ConfigIssue(filename, 0, 0, "", message)
        return ConfigIssue(filename, mark.line + 1, mark.column + 1, "", message)
    if isinstance(exc, yaml.reader.ReaderError):
        # For str input, position is an index into the text.
        pos = exc.position
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return ConfigIssue(
            filename, line, col, "",
            f"invalid YAML: unacceptable character U+{char:04X}: {exc.reason}",
        )
    return ConfigIssue(filename, 0, 0, "", f"invalid YAML: {exc}")


# Returned by NodeReader.construct() when a scalar could not be converted
# (the problem has already been reported).
BAD = object()

# Mapping entries: key text -> (key node, value node), in file order.
Entries = dict[str, tuple[ScalarNode, Node]]


def join_key(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def describe_value(node: Node, value: Any) -> str:
    """Short description of a value for "(got ...)" in messages."""
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {node.value}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {node.value}"
    if isinstance(value, str):
        return f"string {value!r}"
    return f"{type(value).__name__} {node.value!r}"


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == NULL_TAG


class NodeReader:
    """Reads typed values out of nodes, collecting every problem found in
    ``issues`` instead of stopping at the first (each check returns None
    once it has reported one)."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.issues: list[ConfigIssue] = []
        self._constructor = SafeConstructor()

    # -- reporting and generic checks ------------------------------------

    def error(self, node: Node, key: str, message: str) -> None:
        mark = node.start_mark
        self.issues.append(
            ConfigIssue(self.filename, mark.line + 1, mark.column + 1, key, message)
        )

    def construct(self, node: Node, key: str) -> Any:
        """Python value of a scalar node; the node itself for collections
        (which then fail every type check); BAD if conversion failed."""
        if not isinstance(node, ScalarNode):
            return node
        try:
            return self._constructor.construct_object(node)
        except Exception as exc:  # explicit tags can fail in many ways
            self.error(node, key, f"invalid value {node.value!r} for tag {node.tag}: {exc}")
            return BAD

    def describe(self, node: Node) -> str:
        """Like describe_value(), converting the node without reporting errors."""
        try:
            value = self._constructor.construct_object(node) if isinstance(node, ScalarNode) else node
        except Exception:
            return repr(node.value)
        return describe_value(node, value)

    def mapping(self, node: Node, key: str) -> Entries | None:
        """Entries of a mapping node, reporting duplicate and non-scalar
        keys (the first occurrence of a duplicated key wins)."""
        if not isinstance(node, MappingNode):
            self.error(node, key, f"must be a mapping (got {self.describe(node)})")
            return None
        entries: Entries = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                self.error(key_node, key, f"keys must be scalars (got {describe_value(key_node, None)})")
                continue
            if key_node.tag == MERGE_TAG:
                self.error(key_node, key, "merge keys ('<<') are not supported")
                continue
            name = key_node.value
            if name in entries:
                first = entries[name][0].start_mark
                self.error(
                    key_node, join_key(key, name),
                    f"duplicate key {name!r} (first defined at line {first.line + 1}, "
                    f"column {first.column + 1})",
                )
                continue
            entries[name] = (key_node, value_node)
        return entries

    def check_keys(
        self,
        entries: Entries,
        allowed: tuple[str, ...],
        key: str,
        node: Node,
        required: tuple[str, ...] = (),
    ) -> None:
        expected = ", ".join(sorted(allowed))
        for name, (key_node, _) in entries.items():
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f", did you mean {close[0]!r}?" if close else ""
                self.error(
                    key_node, join_key(key, name),
                    f"unknown key {name!r}{hint} (expected one of: {expected})",
                )
        for name in required:
            if name not in entries:
                self.error(node, key, f"missing required key {name!r}")

    def integer(self, node: Node, key: str, lo: int, hi: int) -> int | None:
        value = self.construct(node, key)
        if value is BAD:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            self.error(node, key, f"must be an integer {lo}..{hi} (got {describe_value(node, value)})")
            return None
        if not lo <= value <= hi:
            self.error(node, key, f"must be {lo}..{hi} (got {value})")
            return None
        return value

    def string(self, node: Node, key: str) -> str | None:
        value = self.construct(node, key)
        if value is BAD:
            return None
        if not isinstance(value, str):
            self.error(node, key, f"must be a string (got {describe_value(node, value)})")
            return None
        return value

    def choice(self, node: Node, key: str, choices: tuple[str, ...]) -> str | None:
        value = self.construct(node, key)
        if value is BAD:
            return None
        if isinstance(value, str) and value in choices:
            return value
        got = repr(value) if isinstance(value, str) else describe_value(node, value)
        self.error(node, key, f"must be one of: {', '.join(choices)} (got {got})")
        return None

    def absolute_path(self, node: Node, key: str) -> str | None:
        path = self.string(node, key)
        if path is None:
            return None
        if not path:
            self.error(node, key, "must be an absolute path (got an empty string)")
            return None
        if "\0" in path:
            self.error(node, key, f"must not contain NUL characters (got {path!r})")
            return None
        if not posixpath.isabs(path):
            self.error(node, key, f"must be an absolute path (got {path!r})")
            return None
        return path

    def boolean(self, node: Node, key: str) -> bool | None:
        value = self.construct(node, key)
        if value is BAD:
            return None
        if not isinstance(value, bool):
            self.error(node, key, f"must be true or false (got {describe_value(node, value)})")
            return None
        return value

    def seconds(self, node: Node, key: str, lo: float, hi: float) -> float | None:
        """A duration: an int or a float (YAML 1.1: "0.5", "10"), lo..hi."""
        value = self.construct(node, key)
        if value is BAD:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.error(node, key, f"must be a number of seconds {lo:g}..{hi:g} "
                                  f"(got {describe_value(node, value)})")
            return None
        if not lo <= value <= hi:       # NaN fails this too
            self.error(node, key, f"must be {lo:g}..{hi:g} seconds (got {value:g})")
            return None
        return float(value)
