"""The catalogue of finding codes agrees with the docs, the code that records them, and the tests."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from lightning_sanity import catalogue
from lightning_sanity.catalogue import CATALOGUE
from lightning_sanity.findings import Severity

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lightning_sanity"
HEADING = re.compile(r"^(#{2,3}) (.+)$", re.MULTILINE)
CODE_HEADING = re.compile(r"^`([a-z_]+\.[a-z_]+)` \((info|warning|error)\)$")


def documented() -> dict[str, tuple[str, str]]:
    """``code -> (severity, section)`` from the ``### `code` (severity)`` headings of docs/findings.md."""
    codes: dict[str, tuple[str, str]] = {}
    section = ""
    for level, title in HEADING.findall((ROOT / "docs" / "findings.md").read_text()):
        if level == "##":
            section = title.split()[0]
        elif match := CODE_HEADING.match(title):
            assert match.group(1) not in codes, f"{match.group(1)} documented twice"
            codes[match.group(1)] = (match.group(2), section)
    return codes


def record_calls() -> list[tuple[str, int, ast.Call]]:
    calls = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "record":
                calls.append((path.name, node.lineno, node))
    return calls


def test_docs_document_every_declared_code_with_its_severity_under_its_owner() -> None:
    expected = {code: (str(entry.severity), entry.owner) for code, entry in CATALOGUE.items()}
    assert documented() == expected


def _literal_severity(node: ast.expr) -> Severity | None:
    """``Severity.WARNING`` written at the call site; ``None`` for the catalogue's default or a variable."""
    is_literal = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Severity"
    return Severity[node.attr] if is_literal else None


def test_every_recorded_code_is_declared_with_the_severity_the_call_site_gives() -> None:
    problems = []
    for name, line, call in record_calls():
        if len(call.args) < 3:
            continue
        code, severity = call.args[1], call.args[2]
        if not (isinstance(code, ast.Constant) and isinstance(code.value, str)):
            continue  # a variable: its literal values are checked by the next test
        entry = catalogue.declared(code.value)
        if entry is None:
            problems.append(f"{name}:{line}: {code.value} is not declared in catalogue.py")
        elif _literal_severity(severity) not in (None, entry.severity):
            problems.append(f"{name}:{line}: {code.value} recorded as {severity.attr}, declared {entry.severity}")
    assert record_calls() and problems == []


def test_every_code_like_string_in_the_package_is_declared() -> None:
    prefixes = {code.split(".")[0] for code in CATALOGUE}
    undeclared = {
        f"{path.name}: {node.value}"
        for path in sorted(PACKAGE.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and re.fullmatch(r"[a-z]+\.[a-z_]+", node.value)
        and node.value.split(".")[0] in prefixes and node.value not in CATALOGUE
    }  # fmt: skip
    assert undeclared == set()


def test_every_declared_code_is_asserted_by_a_test() -> None:
    tests = "".join(path.read_text() for path in (ROOT / "tests").glob("test_*.py") if path.name != Path(__file__).name)
    assert [code for code in CATALOGUE if f'"{code}"' not in tests] == []


def test_catalogue_entries_are_one_liners_a_user_can_read() -> None:
    for entry in CATALOGUE.values():
        assert entry.meaning.endswith(".") and entry.hint.endswith("."), entry.code
        assert "\n" not in entry.meaning + entry.hint
        assert entry.owner.endswith("Callback")
