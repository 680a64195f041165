"""The layers only call downwards (README, "Inside"; issue #18): read from the source's imports,
TYPE_CHECKING ones included, so a shortcut between layers fails here before it spreads."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "s3mount"


def _imports() -> dict[str, set[str]]:
    """{module: every module name it imports}, relative imports resolved."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        module = ".".join(parts)
        package = parts if is_package else parts[:-1]
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1])
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module or ""
                names.add(target)
                names.update(f"{target}.{a.name}" for a in node.names)
        found[module] = names
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                cycles.append([*stack[stack.index(v):], v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


def test_no_import_cycles() -> None:
    imports = _imports()
    graph = {m: {n for n in names if n in imports and n != m} for m, names in imports.items()}
    assert _cycles(graph) == []


def _third_party(module_prefix: str) -> dict[str, set[str]]:
    return {m: {n.split(".")[0] for n in names}
            for m, names in _imports().items() if m.startswith(module_prefix)}


def test_the_core_never_talks_to_boto3() -> None:
    offenders = {m: n & {"boto3", "botocore", "s3transfer", "urllib3"}
                 for m, n in _third_party("s3mount.fs").items()}
    assert {m: n for m, n in offenders.items() if n} == {}


def test_the_store_never_imports_fuse_or_the_core() -> None:
    store = {m: names for m, names in _imports().items() if m.startswith("s3mount.store")}
    offenders = {m: {n for n in names if n.split(".")[0] in ("pyfuse3", "trio")
                     or n.startswith(("s3mount.fs", "s3mount.credentials", "s3mount.mount"))}
                 for m, names in store.items()}
    assert {m: n for m, n in offenders.items() if n} == {}


def test_only_credentials_aws_imports_the_sdk_among_the_credentials() -> None:
    users = {m for m, n in _third_party("s3mount.credentials").items()
             if n & {"boto3", "botocore"}}
    assert users == {"s3mount.credentials.aws"}
