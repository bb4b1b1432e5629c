"""A planted-feature corpus, a BAE that computes the planted features exactly, and scripted fake LLMs.

Store activations (d = 8) hold the planted rules directly: column k is 1 where rule k holds, else 0, and the
coder's encoder is the identity with bias -0.5, so bit k = rule k. Features:
    0 digit tokens (lexical)              1 " bank" not right after " river" (context-dependent)
    2 every token except " the" (p > 0.5: the minority state is OFF, on " the")
    3 dead                                4 always on
    5 random 5% of tokens (no rule)       6 fires on 5 tokens only (too rare)      7 dead
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import torch

from bitlens.coders.bae import BAEConfig, BinaryAutoencoder
from bitlens.coders.registry import save_coder
from bitlens.data.store import StoreWriter
from bitlens.interpretation.backends.base import Backend, ChatRequest, Reply

VOCAB = [" the", " a", " bank", " river", " money", " loan", " we", " they", " paid", " sat", " by", " on",
         " grass", " ship", " sea", " 7", " 42", " 1812", ".", " Whale", "\n", " of"]
TOK = {t: i for i, t in enumerate(VOCAB)}
D = 8


def _sentences(rng: np.random.Generator) -> list[list[str]]:
    kinds = [
        [" we", " paid", " the", " bank", " a", " loan", " of", " 42", "."],
        [" they", " sat", " by", " the", " river", " bank", " on", " the", " grass", "."],
        [" the", " ship", " sat", " on", " the", " sea", " in", " 1812", "."],
        [" a", " Whale", " of", " a", " ship", "\n"],
        [" the", " bank", " paid", " 7", " money", "."],
    ]
    out = []
    for _ in range(14):
        s = [w if w in TOK else " of" for w in kinds[int(rng.integers(len(kinds)))]]
        out.append(s)
    return out


def make_planted_store(path: Path, n_docs: int = 24, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    writer = StoreWriter.open(path, settings={"planted": seed}, layers=[0], dim=D, dtype="float32", shard_rows=1000,
                              documents=lambda: [{"index": i, "id": f"doc{i}"} for i in range(n_docs)],
                              token_texts=lambda: list(VOCAB))
    rare_left = 5
    for doc in range(n_docs):
        rows, meta = [], []
        for s_idx, sentence in enumerate(_sentences(rng)):
            chunk = s_idx // 7
            for w_idx, word in enumerate(sentence):
                prev = sentence[w_idx - 1] if w_idx else ""
                x = np.zeros(D, dtype=np.float32)
                x[0] = word.strip().isdigit()
                x[1] = word == " bank" and prev != " river"
                x[2] = word != " the"
                x[4] = 1.0
                x[5] = rng.random() < 0.05
                if rare_left and doc % 5 == 0 and w_idx == 0:
                    x[6] = 1.0
                    rare_left -= 1
                rows.append(x)
                position = 1 + (s_idx % 7) * 12 + w_idx
                meta.append([doc, chunk, s_idx, position, TOK[word]])
        writer.add({0: np.stack(rows)}, np.asarray(meta, dtype=np.int32), cursor=(doc + 1, 0),
                   excluded={"special": 0, "first": 0}, sequences=2)
    writer.finish()
    return path


def make_planted_coder(path: Path) -> Path:
    model = BinaryAutoencoder(BAEConfig(d_in=D, d_code=D))
    with torch.no_grad():
        model.encoder.weight.copy_(torch.eye(D))
        model.encoder.bias.fill_(-0.5)
    save_coder(model, path)
    return path


# ------------------------------------------------------------------------------------------- scripted LLMs

RULES = {"digits": lambda tok, before: tok.lstrip("␣").isdigit(),
         "bank in a money sense": lambda tok, before: tok == "␣bank" and not before.endswith(" river"),
         "the word the": lambda tok, before: tok == "␣the"}


def _coin(text: str) -> bool:
    return hashlib.sha256(text.encode()).digest()[0] < 128


class ScriptedLLM(Backend):
    """Explainer: names the planted rule that fits every marked example, else 'unknown'. Judge: 'perfect' applies
    the named rule to the marked token; 'coin' answers by a coin seeded by the prompt. ``fail_after`` raises
    after that many calls (a crash), ``garbage`` answers every judgement unparseably."""

    kind = "fake"

    def __init__(self, judge: str = "perfect", fail_after: int | None = None, garbage: bool = False):
        super().__init__("scripted")
        self.judge = judge
        self.fail_after = fail_after
        self.garbage = garbage
        self.prompts: list[str] = []

    async def complete(self, request: ChatRequest) -> Reply:
        if self.fail_after is not None and len(self.prompts) >= self.fail_after:
            raise RuntimeError("scripted crash")
        user = request.messages[-1][1]
        self.prompts.append(repr(request.messages))
        if not request.choices:
            marked = re.findall(r"⟦(.*?)⟧", user.split("NOT active")[0])
            for name, rule in RULES.items():
                if marked and all(rule(m, "") for m in marked) and name != "bank in a money sense":
                    return Reply(text=name, prompt_tokens=len(user) // 4, completion_tokens=3)
            if marked and all(m == "␣bank" for m in marked):
                return Reply(text="bank in a money sense", prompt_tokens=len(user) // 4, completion_tokens=5)
            return Reply(text="unknown", prompt_tokens=len(user) // 4, completion_tokens=1)
        if self.garbage:
            return Reply(text="Maybe?", prompt_tokens=len(user) // 4, completion_tokens=2)
        explanation = re.search(r"Description: (.*)", user).group(1)
        data = user.split("⟪DATA⟫")[1].split("⟪/DATA⟫")[0]
        before, tok = re.search(r"^(.*?)⟦(.*?)⟧", data).groups()
        rule = RULES.get(explanation)
        answer = _coin(user) if (self.judge == "coin" or rule is None) else rule(tok, before)
        return Reply(text="Yes." if answer else "no", prompt_tokens=len(user) // 4, completion_tokens=1)
