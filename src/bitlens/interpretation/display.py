"""Token display for prompts and reports: visible whitespace, the target token marked, corpus text delimited.

Store token texts are already decoded (no byte-level glyphs such as "Ġ"); a token holding only part of a UTF-8
character decodes to U+FFFD and is shown as ⟨?⟩. Markers cannot be forged by corpus text: the bracket
characters used for marking and delimiting are replaced wherever they occur in the text itself.
"""

from __future__ import annotations

MARK_OPEN, MARK_CLOSE = "⟦", "⟧"
DATA_OPEN, DATA_CLOSE = "⟪DATA⟫", "⟪/DATA⟫"
_RESERVED = {MARK_OPEN: "[", MARK_CLOSE: "]", "⟪": "<", "⟫": ">"}


def clean(text: str) -> str:
    """Corpus text made safe to embed: reserved marker characters replaced, newlines and tabs visible,
    partial UTF-8 shown as ⟨?⟩."""
    for char, repl in _RESERVED.items():
        text = text.replace(char, repl)
    return text.replace("\ufffd", "⟨?⟩").replace("\r", "").replace("\n", "↵").replace("\t", "⇥")


def show_token(text: str) -> str:
    """One token with leading/trailing spaces visible: ' whale' -> '␣whale', '\\n' -> '↵'."""
    body = clean(text)
    stripped = body.lstrip(" ")
    lead = len(body) - len(stripped)
    trail = len(stripped) - len(stripped.rstrip(" "))
    core = stripped.rstrip(" ") if trail else stripped
    return "␣" * lead + core + "␣" * trail if (lead or trail or not core) else core


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
