"""The layers only call downwards (README, "Inside"; issue #18): read from the source's imports,
TYPE_CHECKING ones included, so a shortcut between layers fails here before it spreads."""

from __future__ import annotations

import ast
import builtins
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


METHODS_MAX = 30
"""Methods (def and async def, private ones included) of one class in s3mount/fs: a class past
it is several components in one, sharing state nobody declared (issue #18)."""


def _classes() -> dict[str, tuple[str, ast.ClassDef]]:
    """{class name: (module, its definition)} of every class in s3mount/."""
    found: dict[str, tuple[str, ast.ClassDef]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                found[node.name] = (module, node)
    return found


def _base_names(cls: ast.ClassDef) -> list[str]:
    return [b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
            for b in cls.bases]


def _is_exception_or_protocol(name: str, classes: dict[str, tuple[str, ast.ClassDef]]) -> bool:
    if name == "Protocol" or name.endswith(("Error", "Exception")):
        return True
    if name not in classes:
        return isinstance(getattr(builtins, name, None), type) and \
            issubclass(getattr(builtins, name), BaseException)
    return any(_is_exception_or_protocol(b, classes) for b in _base_names(classes[name][1]))


def test_no_class_in_the_core_is_several_components() -> None:
    too_big = {}
    for module, cls in _classes().values():
        if module.startswith("s3mount.fs."):
            n = sum(isinstance(b, ast.FunctionDef | ast.AsyncFunctionDef) for b in cls.body)
            if n > METHODS_MAX:
                too_big[f"{module}.{cls.name}"] = n
    assert too_big == {}


def test_the_core_has_no_mixins() -> None:
    """A class in s3mount/fs inherits from no other class of ours but a Protocol or an
    exception: components are wired together, not mixed into one object."""
    classes = _classes()
    mixed = {f"{module}.{cls.name}": b for module, cls in classes.values()
             if module.startswith("s3mount.fs.")
             for b in _base_names(cls) if b in classes and b != "Protocol"
             and not _is_exception_or_protocol(b, classes)}
    assert mixed == {}
