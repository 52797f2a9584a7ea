"""Every test that SECURITY.md, the READMEs, docs/ and the vectors' provenance notes name exists.

A claim names its test as ``tests/<path>.py::<name>`` (``::<Class>::<name>`` for a
method, ``<name>[<id>]`` for one parametrised case); a bare ``::<name>`` continues
the file named last before it, as the documents write lists, and so does a bare
``test_<name>`` in backquotes. Names are found by
parsing the test modules with ``ast`` (no imports, so it is fast and sees modules
whose optional dependencies are missing); a parametrised id is checked against
pytest's own collection of that file.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_DOCUMENT_GLOBS = ("SECURITY.md", "README.md", "docs/*.md", "examples/*/README.md", "tests/vectors/*/PROVENANCE.md")
DOCUMENTS = tuple(sorted(str(p.relative_to(ROOT)) for pattern in _DOCUMENT_GLOBS for p in ROOT.glob(pattern)))

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_PARAM = r"(?:\[[^\]\s`]*\])?"
_REFERENCE = re.compile(
    rf"(?P<file>tests/[A-Za-z0-9_/]+\.py)(?P<path>(?:::{_NAME}{_PARAM})*)"
    rf"|(?<![\w.:/])(?P<short>(?:::{_NAME}{_PARAM})+)"
    rf"|(?<=`)(?P<bare>test_[A-Za-z0-9_]*{_PARAM})(?=`)"
)


@dataclass(frozen=True)
class Reference:
    """One test reference found in a document."""

    document: str
    line: int
    file: str
    parts: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.document}:{self.line}: {self.file}{''.join('::' + p for p in self.parts)}"


def references(document: str, text: str) -> list[Reference]:
    """The references of ``text`` in order, shorthand resolved to the file named last."""
    found: list[Reference] = []
    last_file: str | None = None
    for match in _REFERENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        if match.group("file") is not None:
            last_file = match.group("file")
            path = match.group("path")
        else:
            if last_file is None:
                raise AssertionError(f"{document}:{line}: '{match.group(0)}' follows no test file")
            path = match.group("short") or match.group("bare")
        parts = tuple(p for p in path.split("::") if p)
        found.append(Reference(document, line, last_file, parts))
    return found


@cache
def _definitions(file: str) -> dict[str, set[str]]:
    """Module-level test names (key "") and each class's method names, from the source."""
    tree = ast.parse((ROOT / file).read_text(encoding="utf-8"), filename=file)
    names: dict[str, set[str]] = {"": set()}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names[""].add(node.name)
        elif isinstance(node, ast.Assign):
            names[""].update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ClassDef):
            names[""].add(node.name)
            names[node.name] = {
                item.name for item in node.body if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            }
    return names


@cache
def _collected_ids(file: str) -> frozenset[str]:
    """Node ids pytest collects from ``file`` (run in a fresh interpreter)."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", file],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return frozenset(line.strip() for line in done.stdout.splitlines() if line.startswith(file + "::"))


def problem(ref: Reference) -> str | None:
    """Why ``ref`` does not name an existing test, or None."""
    if not (ROOT / ref.file).is_file():
        return f"{ref}: no such file"
    if not ref.parts:
        return None
    names = _definitions(ref.file)
    bare = [re.sub(r"\[.*\]$", "", p) for p in ref.parts]
    if len(bare) == 1:
        if bare[0] not in names[""]:
            return f"{ref}: no test '{bare[0]}' in {ref.file}"
    elif len(bare) == 2:
        if bare[1] not in names.get(bare[0], set()):
            return f"{ref}: no method '{bare[1]}' in class '{bare[0]}' of {ref.file}"
    else:
        return f"{ref}: nested classes are not supported in references"
    if bare != list(ref.parts):
        node_id = ref.file + "".join("::" + p for p in ref.parts)
        if node_id not in _collected_ids(ref.file):
            return f"{ref}: pytest collects no '{node_id}'"
    return None


def _document_references() -> list[Reference]:
    return [
        ref for document in DOCUMENTS for ref in references(document, (ROOT / document).read_text(encoding="utf-8"))
    ]


def test_the_documents_name_tests():
    assert {"SECURITY.md", "README.md", "docs/flower.md", "tests/vectors/masking/PROVENANCE.md"} <= set(DOCUMENTS)
    refs = _document_references()
    security = [r for r in refs if r.document == "SECURITY.md" and r.parts]
    # SECURITY.md backs its claims with well over a hundred tests; an empty list means the
    # parser broke, not that every reference is fine.
    assert len(security) > 100
    assert {r.file for r in security} >= {"tests/secagg/test_encoding.py", "tests/fl_core/test_privacy.py"}


def test_every_test_named_in_the_documents_exists():
    problems = [p for p in map(problem, _document_references()) if p is not None]
    assert problems == [], "stale test references:\n" + "\n".join(problems)


def test_every_security_claim_names_a_test():
    """Each ``**C-n**`` claim paragraph names at least one test."""
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    # A claim runs from its "* **C-n**" bullet to the next bullet, blank line or heading.
    claims = re.findall(r"(?ms)^\* \*\*(C-\d+)\*\*(.*?)(?=^\* |^\s*$|^#)", text)
    assert len(claims) >= 19, "the claim parser found too few C-n claims"
    bare = [claim for claim, body in claims if not _REFERENCE.search(body)]
    assert bare == [], f"claims naming no test: {bare}"


# --- the checker itself: it must catch what it is for -------------------------------------


def test_shorthand_continues_the_file_named_last():
    text = (
        "`tests/a/test_x.py::test_one`, `::test_two` and `test_three`;"
        " then `tests/b/test_y.py::K::test_m`, `::test_p[id]`"
    )
    got = [(r.file, r.parts) for r in references("doc", text)]
    assert got == [
        ("tests/a/test_x.py", ("test_one",)),
        ("tests/a/test_x.py", ("test_two",)),
        ("tests/a/test_x.py", ("test_three",)),
        ("tests/b/test_y.py", ("K", "test_m")),
        ("tests/b/test_y.py", ("test_p[id]",)),
    ]


def test_a_placeholder_like_file_colon_test_is_not_a_reference():
    assert references("doc", "Claims name (`file::test`) their test.") == []


def test_shorthand_with_no_file_before_it_is_an_error():
    with pytest.raises(AssertionError, match="follows no test file"):
        references("doc", "see `::test_orphan`")


_THIS = "tests/test_security_claims.py"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("`tests/no_such_dir/test_nothing.py::test_x`", "no such file", id="missing-file"),
        pytest.param(f"`{_THIS}::test_renamed_long_ago`", "no test 'test_renamed_long_ago'", id="missing-test"),
        pytest.param(f"`{_THIS}::Reference::test_x`", "no method 'test_x' in class 'Reference'", id="missing-method"),
        pytest.param(f"`{_THIS}::test_shorthand_continues_the_file_named_last`", None, id="test"),
        pytest.param(f"`{_THIS}::Reference::__str__`", None, id="method"),
        pytest.param(f"`{_THIS}::test_stale_references_are_reported[missing-file]`", None, id="param-id"),
        pytest.param(f"`{_THIS}::test_stale_references_are_reported[no-such-id]`", "pytest collects no", id="bad-id"),
    ],
)
def test_stale_references_are_reported(text, expected):
    (ref,) = references("doc", text)
    got = problem(ref)
    if expected is None:
        assert got is None
    else:
        assert got is not None and expected in got
