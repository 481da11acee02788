#!/usr/bin/env python3
"""Build a replay workload for the semantic cache from a split of the labelled pairs.

Reads  bench/data/cache_eval/pairs_<split>.jsonl
Writes bench/data/cache_eval/workload_<split>.jsonl

Each output line is one single-turn question in arrival order:

    {"seq": 1, "question": "...", "intent": "h0123.a", "kind": "new",
     "pair": "h0123", "class": null}

- intent: id of the question whose answer is correct for this line. Questions
  joined by a `same` pair share one intent; every other question has its own.
  A cache hit is correct iff the cached entry's intent equals this line's intent.
- kind:   new     first question of its intent, nothing that looks like it came before
          repeat  exact text seen before (same intent)
          reword  new text, intent seen before (the `b` of a `same` pair after its `a`)
          trap    new intent whose look-alike (the other side of a `different` pair)
                  was asked before: any hit here is a wrong answer
- pair / class: the pair the question comes from and, for reword and trap lines,
  the class of that pair (paraphrase, modifier, ...); null otherwise.

Kinds are computed from the final order, so the labels hold whatever the shuffle did.
Best possible hit rate = (repeat + reword) / total: a perfect cache hits exactly those.

Python 3 standard library only; deterministic for a given --seed.
"""

import argparse
import collections
import json
import os
import random
import sys

DEFAULT_SEED = 20240611
DEFAULT_SIZE = 1500
# fresh has fewer pairs: at 1500 lines its traps would rise to 12%
SPLIT_SIZE = {"fresh": 1250}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "bench", "data", "cache_eval")


def load_pairs(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class Groups:
    """Union-find over question texts; `same` pairs join their two texts."""

    def __init__(self):
        self.parent = {}

    def add(self, t):
        self.parent.setdefault(t, t)

    def find(self, t):
        while self.parent[t] != t:
            self.parent[t] = self.parent[self.parent[t]]
            t = self.parent[t]
        return t

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def build(pairs, size, seed, cacheable_share, trap_share):
    rng = random.Random(seed)
    groups = Groups()
    origin = {}  # text -> (pair id, side) of its first occurrence in the file
    for p in pairs:
        for side in ("a", "b"):
            groups.add(p[side])
            origin.setdefault(p[side], (p["id"], side))
        if p["label"] == "same":
            groups.union(p["a"], p["b"])

    # intent id of a group = origin of its earliest text in file order
    order = {t: i for i, t in enumerate(origin)}
    members = collections.defaultdict(list)
    for t in origin:
        members[groups.find(t)].append(t)
    intent = {}
    for root, texts in members.items():
        first = min(texts, key=order.get)
        pid, side = origin[first]
        for t in texts:
            intent[t] = f"{pid}.{side}"

    # look-alike relation between intents (from `different` pairs)
    near = collections.defaultdict(set)
    for p in pairs:
        if p["label"] == "different":
            ia, ib = intent[p["a"]], intent[p["b"]]
            if ia == ib:
                sys.exit(f"pair {p['id']}: 'different' pair inside one 'same' group")
            near[ia].add(ib)
            near[ib].add(ia)

    same = [p for p in pairs if p["label"] == "same"]
    diff = [p for p in pairs if p["label"] == "different"]
    rng.shuffle(same)
    rng.shuffle(diff)

    # Budget: firsts (new + trap) make up 1 - cacheable_share of the lines.
    # Rewords come from `same` pairs, traps from `different` pairs, the rest of the
    # firsts are lone questions whose look-alikes never appear.
    used = set()  # intents that appear
    units = []  # (kind, pair, [texts in required order])

    n_target = size
    want_traps = round(trap_share * n_target)
    want_rewords = min(len(same), round(cacheable_share * n_target * 0.5))

    for p in same[:want_rewords]:
        units.append(("reword", p, [p["a"], p["b"]]))
        used.add(intent[p["a"]])

    traps = 0
    for p in diff:
        if traps >= want_traps:
            break
        ib = intent[p["b"]]
        # the trap side must be brand new and look like nothing else in use
        if ib in used or (near[ib] - {intent[p["a"]]}) & used:
            continue
        units.append(("trap", p, [p["a"], p["b"]]))
        used.add(intent[p["a"]])
        used.add(ib)
        traps += 1

    def firsts():
        return sum(len(u[2]) if u[0] == "trap" else 1 for u in units)

    want_firsts = round((1 - cacheable_share) * n_target)
    for p in diff:
        if firsts() >= want_firsts:
            break
        side = rng.choice(("a", "b"))
        t = p[side]
        i = intent[t]
        if i in used or near[i] & used:
            continue
        units.append(("lone", p, [t]))
        used.add(i)

    # Not enough material for the requested size: shrink so the shares still hold.
    n_lines = min(n_target, round(firsts() / (1 - cacheable_share)))
    n_rewords = sum(1 for u in units if u[0] == "reword")
    n_repeats = max(0, round(cacheable_share * n_lines) - n_rewords)

    # Positions: every first appearance gets a random time; a pair's second
    # text comes after its first one.
    events = []  # (time, text, pair, cls)
    for kind, p, texts in units:
        if len(texts) == 1:
            events.append((rng.random(), texts[0], p))
        else:
            t1 = rng.random() * 0.9
            t2 = t1 + (1 - t1) * rng.uniform(0.05, 1.0)
            events.append((t1, texts[0], p))
            events.append((t2, texts[1], p))
    # Repeats: a few popular questions repeat often, most at most once or twice.
    events.sort(key=lambda e: e[0])
    pool = events[:]
    weights = [1.0 / (1 + (k % 37)) for k in range(len(pool))]
    rng.shuffle(weights)
    for _ in range(n_repeats):
        src = rng.choices(pool, weights=weights)[0]
        t = src[0] + (1 - src[0]) * rng.random()
        events.append((t, src[1], src[2]))
    events.sort(key=lambda e: (e[0], e[1]))

    # Classify from the actual order.
    seen_text, seen_intent = set(), set()
    out = []
    for seq, (_, text, p) in enumerate(events, 1):
        i = intent[text]
        cls = None
        if text in seen_text:
            kind = "repeat"
        elif i in seen_intent:
            kind, cls = "reword", p["class"]
        elif near[i] & seen_intent:
            kind, cls = "trap", p["class"]
        else:
            kind = "new"
        seen_text.add(text)
        seen_intent.add(i)
        out.append({"seq": seq, "question": text, "intent": i, "kind": kind,
                    "pair": p["id"], "class": cls})
    return out


def summary(split, rows):
    n = len(rows)
    kinds = collections.Counter(r["kind"] for r in rows)
    print(f"{split}: {n} questions, {len({r['intent'] for r in rows})} intents")
    for k in ("new", "repeat", "reword", "trap"):
        print(f"  {k:7s} {kinds[k]:5d}  {100 * kinds[k] / n:5.1f}%")
    best = kinds["repeat"] + kinds["reword"]
    print(f"  best possible hit rate: {best}/{n} = {100 * best / n:.1f}% "
          f"(exact-match only: {100 * kinds['repeat'] / n:.1f}%)")
    for k in ("reword", "trap"):
        c = collections.Counter(r["class"] for r in rows if r["kind"] == k)
        print(f"  {k} classes: " + ", ".join(f"{a} {b}" for a, b in sorted(c.items())))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", choices=("dev", "heldout", "fresh", "both"), default="both")
    ap.add_argument("--size", type=int, default=None,
                    help="target number of lines (default 1500, fresh 1250)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--cacheable", type=float, default=0.40, help="share of repeats + rewords")
    ap.add_argument("--traps", type=float, default=0.10, help="share of trap lines")
    ap.add_argument("--data-dir", default=DATA)
    args = ap.parse_args()

    splits = ("dev", "heldout") if args.split == "both" else (args.split,)
    for split in splits:
        pairs = load_pairs(os.path.join(args.data_dir, f"pairs_{split}.jsonl"))
        size = args.size if args.size is not None else SPLIT_SIZE.get(split, DEFAULT_SIZE)
        rows = build(pairs, size, args.seed, args.cacheable, args.traps)
        path = os.path.join(args.data_dir, f"workload_{split}.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        summary(split, rows)
        print(f"  wrote {os.path.relpath(path, ROOT)}")


if __name__ == "__main__":
    main()
