#!/usr/bin/env python3
"""Fails when two modules of one crate import each other.

Reads every crate's src/ (code outside `#[cfg(test)]` blocks, comments and
string literals left out), resolves each `crate::…` and `super::…` path
to the deepest module that exists, and lists every pair of modules that
reach each other. A module and its own submodules do not count: a parent
declares its children. Run from the repository root; exits 1 on a pair.
"""
import glob
import re
import sys

CRATES = ["protocol", "agent", "ctl", "broker", "man"]
PATH = re.compile(r"\b(crate|super)::((?:[A-Za-z_]\w*::)*)(\{[^}]*\}|[A-Za-z_]\w*)", re.S)


def module_of(crate, path):
    rel = path[len(crate) + len("/src/"):-len(".rs")]
    if rel.endswith("/mod"):
        rel = rel[: -len("/mod")]
    return "" if rel in ("lib", "main") else rel.replace("/", "::")


def code_of(path):
    """The file's lines before its first test block, without comments and
    string literals."""
    kept = []
    for line in open(path, encoding="utf-8"):
        if line.strip().startswith("#[cfg(test)]"):
            break
        if line.strip().startswith("//"):
            continue
        kept.append(re.sub(r'"(?:[^"\\]|\\.)*"', '""', line))
    return "".join(kept)


def imports(crate):
    files = glob.glob(f"{crate}/src/**/*.rs", recursive=True)
    modules = {module_of(crate, f): f for f in files}

    def resolve(path):
        parts = [p for p in path.split("::") if p]
        for k in range(len(parts), 0, -1):
            candidate = "::".join(parts[:k])
            if candidate in modules:
                return candidate
        return None

    edges = {}
    for module, path in modules.items():
        parent = module.rsplit("::", 1)[0] if "::" in module else ""
        found = set()
        for m in PATH.finditer(code_of(path)):
            root, base, tail = m.groups()
            prefix = "" if root == "crate" else (parent + "::" if parent else "")
            items = [tail]
            if tail.startswith("{"):
                items = [i.strip().split(" ")[0].split("::{")[0] for i in tail[1:-1].split(",")]
            for item in filter(None, items):
                target = resolve(prefix + base + item)
                if target is None and root == "super":
                    target = parent
                if target is not None and target != module:
                    found.add(target)
        edges[module] = found
    return edges


def related(a, b):
    return a == b or a.startswith(b + "::") or b.startswith(a + "::") or "" in (a, b)


def main():
    pairs = []
    for crate in CRATES:
        edges = imports(crate)
        for a, targets in edges.items():
            for b in targets:
                if a < b and a in edges.get(b, ()) and not related(a, b):
                    pairs.append(f"{crate}: {a or 'lib'} and {b or 'lib'} import each other")
    for pair in pairs:
        print(pair)
    if pairs:
        return 1
    print("no two modules of a crate import each other")
    return 0


if __name__ == "__main__":
    sys.exit(main())
