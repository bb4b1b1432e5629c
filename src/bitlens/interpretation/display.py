"""Contexts for prompts and reports: the target token marked, whole words found, corpus text delimited.
Single tokens are shown by ``bitlens.data.text`` (one ``show_token`` for the whole package)."""

from __future__ import annotations

from ..data.text import DATA_CLOSE, DATA_OPEN, MARK_CLOSE, MARK_OPEN, clean, show_token

__all__ = ["DATA_CLOSE", "DATA_OPEN", "MARK_CLOSE", "MARK_OPEN", "clean", "show_token", "mark_context",
           "enclosing_word", "data_block"]


def mark_context(before: list[str], target: str, after: list[str]) -> str:
    """Context text with the target token marked: 'the great ⟦␣whale⟧ rose'. Whitespace inside the target is
    made visible so "space + word" and "word" tokens can be told apart."""
    return clean("".join(before)) + MARK_OPEN + show_token(target) + MARK_CLOSE + clean("".join(after))


def enclosing_word(before: list[str], target: str, after: list[str]) -> str | None:
    """The whole word when the target is only part of one ('199' inside '1998', 'arp' inside 'harpoon')."""
    if not target.strip() or not target.strip()[0].isalnum():
        return None
    left = ""
    if not target.startswith((" ", "\n")):
        for tok in reversed(before):
            if not tok or not tok[-1].isalnum():
                break
            left = tok.lstrip() + left
            if tok[0] in " \n":
                break
    right = ""
    for tok in after:
        if not tok or tok[0] in " \n" or not tok[0].isalnum():
            break
        right += tok
    if not left and not right:
        return None
    return clean(left + target.strip() + right)


def data_block(text: str) -> str:
    return f"{DATA_OPEN}{text}{DATA_CLOSE}"
