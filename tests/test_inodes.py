"""The inode table's directory index against a plain model: after any sequence of put, detach,
move and forget, ``children`` and the paths below a directory are exactly what scanning every
cached path would find, and ``move`` moves what the old scan moved."""

from __future__ import annotations

import stat

from hypothesis import given, settings
from hypothesis import strategies as st

from s3mount.fs.attrs import Attrs
from s3mount.fs.inodes import Inode, InodeTable
from s3mount.fs.paths import split

paths = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=4).map("/".join)
kinds = st.sampled_from([stat.S_IFDIR, stat.S_IFREG])
ops = st.one_of(st.tuples(st.just("put"), paths, kinds), st.tuples(st.just("detach"), paths),
                st.tuples(st.just("move"), paths, paths), st.tuples(st.just("forget"), paths))


def held(ino: int) -> bool:
    return ino % 3 == 0  # as if an open file held every third inode


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=40))
def test_directory_index_follows_every_change(steps: list[tuple]) -> None:
    table = InodeTable(Attrs(stat.S_IFDIR | 0o755, 0, 0, 0, 0, 0), held=held)
    model: dict[str, Inode] = {"": table.at("")}  # type: ignore[dict-item]
    for step in steps:
        if step[0] == "put":
            _, path, kind = step
            model[path] = table.put(path, Attrs(kind | 0o644, 0, 0, 0, 0, 0), etag=None)
        elif step[0] == "detach" and step[1] in model:
            table.detach(model.pop(step[1]))
        elif step[0] == "move":
            _, old, new = step
            if old == new or new.startswith(old + "/"):
                continue  # (rename refuses to move a directory into itself)
            moved = {p: n for p, n in model.items() if p == old or p.startswith(old + "/")}
            model.pop(new, None)
            for p in moved:
                del model[p]
            for p, n in moved.items():
                model[new + p[len(old):]] = n
            table.move(old, new)
        elif step[0] == "forget" and step[1] in model:
            node = model[step[1]]
            table.forget(node.ino, 1)
            if not held(node.ino):
                del model[step[1]]
        assert table.by_path == model
        assert all(table.get(n.ino) is n and n.path == p for p, n in model.items())
        for d in {split(p)[0] for p in model if p} | {p for p in model}:
            assert sorted(n.ino for n in table.children(d)) == sorted(
                n.ino for p, n in model.items() if p and split(p)[0] == d), d
