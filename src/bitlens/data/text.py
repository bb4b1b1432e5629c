"""Token text for people and prompts: visible whitespace, reserved marker characters replaced.

Store token texts are already decoded (no byte-level glyphs such as "Ġ"); a token holding only part of a UTF-8
character decodes to U+FFFD and is shown as ⟨?⟩. The bracket characters used to mark a target token and to delimit
corpus text in prompts are replaced wherever they occur in the text itself, so corpus text cannot forge them.
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
