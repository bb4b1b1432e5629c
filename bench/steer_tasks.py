"""Which built-in ICL tasks does a model really learn in context? Accuracy at k = 0 and k = 8 (95% Wilson intervals).

A task qualifies for `bitlens steer` when its k-shot accuracy beats its 0-shot accuracy by at least 0.15 (issue 17).
Every item not in the demonstration pool is a query (split as `bitlens steer` splits, seed 0), in the template of
``bitlens.data.steer_tasks``; the score is accuracy over the label set (first answer tokens) and top-1 over the vocab.

    PYTHONPATH=src python bench/steer_tasks.py [--model embedded] [--layer 15] [--out runs/steer_tasks.json]
"""

from __future__ import annotations

import argparse
import json
import time

from bitlens.data.models import load_model
from bitlens.data.steer_tasks import BUILTIN_TASKS, builtin_task, split_items
from bitlens.experiments.steer import answer_tokens, prompt_texts, run_prompts, score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--layer", type=int, default=15, help="any block: only the logits are used")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/steer_tasks.json")
    args = ap.parse_args()
    lm = load_model(args.model)
    rows = []
    for name in BUILTIN_TASKS:
        started = time.perf_counter()
        task = builtin_task(name)
        pool_size = max(args.k, len(task.examples) // 4)
        split = split_items(task, args.seed, 1, len(task.examples) - pool_size - 1, min_pool=pool_size)
        label_ids, suffix = answer_tokens(lm.tokenizer, task.labels)
        truth = [task.labels.index(q.label) for q in split.evaluate]
        row = {"task": name, "items": len(task.examples), "queries": len(split.evaluate), "pool": len(split.pool),
               "labels": len(set(label_ids))}
        for k in (0, args.k):
            texts = prompt_texts(task, split.evaluate, split.pool, k, args.seed, 1, suffix)
            _, logits = run_prompts(lm, texts, args.layer, 16)
            row[f"k{k}"] = score(logits, label_ids, truth)
        row["gain"] = row[f"k{args.k}"]["accuracy"] - row["k0"]["accuracy"]
        row["qualifies"] = row["gain"] >= 0.15
        row["seconds"] = time.perf_counter() - started
        rows.append(row)
        a, b = row["k0"], row[f"k{args.k}"]
        print(f"{name:<13} n={row['queries']:>3} labels={row['labels']:>3}  k=0 {a['accuracy']:.2f} "
              f"[{a['ci95'][0]:.2f},{a['ci95'][1]:.2f}] top1 {a['top1']:.2f}   k={args.k} {b['accuracy']:.2f} "
              f"[{b['ci95'][0]:.2f},{b['ci95'][1]:.2f}] top1 {b['top1']:.2f}   gain {row['gain']:+.2f} "
              f"{'qualifies' if row['qualifies'] else ''}", flush=True)
    with open(args.out, "w") as f:
        json.dump({"model": lm.describe(), "k": args.k, "seed": args.seed, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
