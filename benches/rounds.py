#!/usr/bin/env python3
"""Medians and ratios of interleaved rounds, for benches/h2.sh and benches/ws.sh.

Usage: rounds.py RESULTS_TSV TITLE NOTE TARGET_SPEC...
RESULTS_TSV: a header line (target, round, then numeric columns), one line per run.
TARGET_SPEC: "COL:A>=B:WANT" (the median of A's COL over B's is at least WANT) or
"COL:A<=B:WANT" (at most WANT: memory, CPU). Per-round ratios are paired by round
(the rounds are interleaved, so a pair shared the machine's conditions).
"""
import statistics as st
import sys

res_f, title, note, *specs = sys.argv[1:]
lines = [l.rstrip("\n").split("\t") for l in open(res_f) if l.strip()]
head, rows = lines[0], lines[1:]
cols = head[2:]
data, order = {}, []
for r in rows:
    t = r[0]
    if t not in data:
        order.append(t)
        data[t] = []
    data[t].append(dict(round=int(r[1]), **{c: float(v) for c, v in zip(cols, r[2:])}))


def med(t, c):
    return st.median(x[c] for x in data[t])


def fmt(v):
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


print(f"\n### {title}\n")
print(note + "\n")
print("| target | rounds | " + " | ".join(cols) + " |")
print("|---|---:|" + "---:|" * len(cols))
for t in order:
    print(f"| {t} | {len(data[t])} | " + " | ".join(fmt(med(t, c)) for c in cols) + " |")

if specs:
    print("\n| target | measured | ratio (per round) | verdict |")
    print("|---|---|---:|---|")
for spec in specs:
    col, rel, want = spec.split(":")
    op = ">=" if ">=" in rel else "<="
    a, b = rel.split(op)
    label = f"{a} {col} {op} {want}x {b}"
    if a not in data or b not in data:
        print(f"| {label} | not measured | - | n/a |")
        continue
    ma, mb = med(a, col), med(b, col)
    r = ma / mb if mb else float("inf")
    ra = {x["round"]: x[col] for x in data[a]}
    rb = {x["round"]: x[col] for x in data[b]}
    pr = [ra[k] / rb[k] for k in sorted(ra) if k in rb and rb[k]]
    spread = f" ({min(pr):.2f}-{max(pr):.2f})" if len(pr) > 1 else ""
    ok = r >= float(want) if op == ">=" else r <= float(want)
    print(f"| {label} | {fmt(ma)} vs {fmt(mb)} | {r:.2f}x{spread} | {'PASS' if ok else 'FAIL'} |")
