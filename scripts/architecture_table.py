"""The "which architectures remove what" table of docs/regularizers.md, from the model-zoo
test's rows (never by hand):

    LEARNSPARSE_ZOO_LOG=zoo.jsonl .venv/bin/python -m pytest -m "slow or not slow" tests/test_model_zoo.py
    .venv/bin/python scripts/architecture_table.py zoo.jsonl --write docs/regularizers.md

Without --write it prints the table. With it, the table replaces what lies between the two
markers in that file (the rest of the page is untouched). With --merge as well, only the
families the log holds are replaced (a rerun of some families, with each family's every model
and recipe in the log); the other rows stay as the earlier run wrote them.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

START, END = "<!-- architecture-table:start -->", "<!-- architecture-table:end -->"
RECIPES = {"dead": "dead channels", "flgc": "FLGC", "lgc": "LGC"}


def _short_reason(reason: str) -> str:
    # Layer-specific details (a conv's group count, an op's shapes) vary; the kind is the point.
    for key, short in [("grouped conv", "grouped conv, uneven per group"), ("reshape", "channel shuffle / reshape"),
                       ("residual add or concat", "residual or concat partner alive"),
                       ("normalises over them", "LayerNorm / GroupNorm mixes channels"),
                       ("non-zero constant", "BatchNorm constant read by a padded conv"),
                       ("changed the output", "pattern not understood (verified, kept)"),
                       ("out of range", "split / slice Torch-Pruning cannot map"),
                       ("could not group", "Torch-Pruning could not group them"),
                       ("failed to remove", "Torch-Pruning raised"), ("dependency search", "search bound"),
                       ("dependency graph failed", "dependency graph failed")]:
        if key in reason:
            return short
    for verb in (" writes them", " reads them"):  # name the op: Sigmoid (a gate), UpsampleNearest2D, …
        if verb in reason:
            return reason.split(verb)[0] + verb + (" (may not keep zeros)" if "writes" in verb else "")
    return reason


HEADER = ["| family | models | exact (≤ 1e-5) | " + " | ".join(RECIPES.values())
          + " | layers keeping zeros, each with a reason | slowest export | what stays, and why |",
          "| --- | ---: | ---: | " + " | ".join("---" for _ in RECIPES) + " | ---: | ---: | --- |"]


def _order(family: str) -> tuple[bool, str]:
    return family.startswith("timm"), family


def table(rows: list[dict], earlier: dict[str, str] | None = None) -> str:
    """The table of `rows`; with `earlier` (family → its row from a previous table), the
    families `rows` does not hold keep those rows."""
    by_family: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_family[r["family"]].append(r)
    lines = list(HEADER)
    previous = {fam: line for fam, line in (earlier or {}).items() if fam not in by_family}
    for fam in sorted([*by_family, *previous], key=_order):
        if fam in previous:
            lines.append(previous[fam])
            continue
        group = by_family[fam]
        cells = []
        for recipe in RECIPES:
            outcomes = Counter(r["outcome"] for r in group if r["recipe"] == recipe)
            cells.append(", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())) or "–")
        reasons = Counter(_short_reason(x) for r in group if r["recipe"] == "dead" for x in r.get("kept_reasons", []))
        notes = {r["note"] for r in group if r.get("note", "").startswith("no conv structure")}
        why = "; ".join(reason for reason, _ in reasons.most_common(3)) or ("; ".join(notes) if notes else "–")
        slowest = max((r.get("seconds", 0.0) for r in group), default=0.0)
        models = len({r["model"] for r in group})
        exact = sum(r.get("relative_diff", 0.0) <= 1e-5 for r in group if "relative_diff" in r)
        runs = sum("relative_diff" in r for r in group)
        kept = sum(r.get("kept_layers", 0) for r in group if r["recipe"] == "dead")
        lines.append(f"| {fam} | {models} | {exact}/{runs} | " + " | ".join(cells)
                     + f" | {kept} | {slowest:.1f} s | {why} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log", help="the JSON lines the model-zoo test wrote (LEARNSPARSE_ZOO_LOG)")
    p.add_argument("--write", help="a markdown file holding the two table markers")
    p.add_argument("--merge", action="store_true", help="with --write: replace only the families in the log")
    args = p.parse_args(argv)
    try:
        rows = [json.loads(line) for line in Path(args.log).read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError) as e:
        print(f"architecture_table: cannot read {args.log}: {e}", file=sys.stderr)
        return 2
    if not args.write:
        print(table(rows))
        return 0
    page = Path(args.write).read_text()
    if START not in page or END not in page:
        print(f"architecture_table: {args.write} has no {START} … {END} markers", file=sys.stderr)
        return 2
    head, rest = page.split(START, 1)
    old, tail = rest.split(END, 1)
    earlier = None
    if args.merge:
        body = [line for line in old.strip().splitlines() if line.startswith("| ") and line not in HEADER]
        earlier = {line.split("|")[1].strip(): line for line in body}
    text = table(rows, earlier)
    Path(args.write).write_text(f"{head}{START}\n{text}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
