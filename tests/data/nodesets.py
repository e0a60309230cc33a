#!/usr/bin/env python3
"""Writes nodesets.tsv: target lists as ctl takes them, each with what
ClusterShell's `nodeset -e` expands it to. The e2e test `nodesets::` runs
`ctl hosts` on every line and compares, so CI needs no ClusterShell.

Regenerate after changing PATTERNS (ClusterShell 1.10.1 made the file):

    pip install ClusterShell
    python3 tests/data/nodesets.py > tests/data/nodesets.tsv

ctl's exclusion is an item of the list (`a,!b`) that removes its hosts
wherever they appear; ClusterShell's is an operator (`a!b`) applied left
to right. Each pattern is handed to nodeset with the included items first
and the excluded ones after, which means the same thing. nodeset prints
its hosts sorted, ctl in the order written: the test compares sets and
checks that ctl printed no host twice.

Where the two differ on purpose the pattern is left out: ctl keeps the
lower bound's padding when the bounds differ in width (`n[01-100]`,
`n[001-3]`, as pdsh does) where nodeset refuses them; ctl refuses
`n[-1]` (nodeset reads the name `n-1`) and adjacent brackets `n[1-2][3-4]`
are a product for ctl, an error for nodeset.

Columns: the list for ctl, the expression given to nodeset, the hosts
(`nodeset -e`) separated by spaces, and the folded set (`nodeset -f`,
compared with `ctl hosts --fold`); `error` in both where nodeset refuses
the pattern (ctl must refuse it too, exit 255).
"""

import subprocess
import sys

PATTERNS = [
    # plain names and lists
    "node1",
    "a,b,c",
    "n1,n1,n2",
    "[1-3]",
    "x[1-2]y",
    # padding comes from the bounds
    "node[01-03]",
    "n[8-10]",
    "n[08-10]",
    "n[09-10]",
    "n[098-101]",
    "n[007]",
    "n[00]",
    "n[0]",
    "n[0-0]",
    "web[001-003,010]",
    "n[01,1]",
    # steps
    "n[0-10/2]",
    "n[1-10/4]",
    "n[01-10/3]",
    "n[1-3/1]",
    "n[1-3,5-9/2]",
    "n[0-100/25]",
    "n[000-020/5]",
    "n[1-9/3],m[0-20/10]",
    "n[1-2]x[3,5]y[7-8/1]",
    "rack[1-4/3]-n[1-6/5]",
    "n[2-3/5]",
    # several ranges, nested commas
    "n[1,3,5-7]",
    "n[2,1]",
    "n[1-3,2-4]",
    "rack[1-3]-n[1,3,5-7]",
    "a[1-3]b[4-5]c,x,y[7-8]",
    "n[1-3]-[01-02]",
    "node[1-9],node[10-12],web[001-003,010]",
    "n[1-2,4],m[5,7-8],o",
    "127.0.0.[2-21]",
    "10.0.[0-1].[1-2]",
    "n[1-3],m[1-2],n[2-4]",
    # exclusions
    "n[1-5],!n3",
    "n[1-3],!n[2-3]",
    "n[1-3],!n5",
    "n[0-10/2],!n[4-6]",
    "n[1-3],m[1-2],!m1",
    "!n2,n[1-3]",
    "n[01-10],!n[02-09/2]",
    "rack[1-2]-n[1-3],!rack[1-2]-n2",
    "a,b,c,!b,!c",
    "n[1-20/3],!n[1-20/6]",
    # what both refuse
    "n[]",
    "n[1-]",
    "n[a]",
    "n[1-3",
    "n1]",
    "n[1,,2]",
    "n[1-2],",
    "n[2-1]",
    "n[1-4/0]",
    "n[1/2]",
    "n[1-x]",
    "n[0-10/a]",
    "n[0-10/]",
]


def clush_expression(pattern):
    """The nodeset expression meaning what ctl makes of `pattern`."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(pattern):
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif c == "," and depth == 0:
            items.append(pattern[start:i])
            start = i + 1
    items.append(pattern[start:])
    included = [i for i in items if not i.startswith("!")]
    excluded = [i for i in items if i.startswith("!")]
    return ",".join(included) + "".join(excluded)


def main():
    out = sys.stdout
    out.write("# made by tests/data/nodesets.py with ClusterShell's nodeset -e and -f; see there\n")
    for pattern in PATTERNS:
        expression = clush_expression(pattern)
        run = subprocess.run(
            ["nodeset", "-e", expression], capture_output=True, text=True, check=False
        )
        hosts = run.stdout.strip() if run.returncode == 0 else "error"
        folded = "error"
        if run.returncode == 0:
            fold = subprocess.run(
                ["nodeset", "-f", expression], capture_output=True, text=True, check=True
            )
            folded = fold.stdout.strip()
        out.write(f"{pattern}\t{expression}\t{hosts}\t{folded}\n")


if __name__ == "__main__":
    main()
