"""The store's token-text table: the backend route gives exactly ``batch_decode``'s texts, and tokenizers whose
decoding transformers post-processes (or overrides) take the generic route."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from bitlens.data.models import embedded_model_dir
from bitlens.data.token_texts import backend_decodes_alone, token_texts
from data_fixtures import tiny_model_dir


def _reference(tokenizer) -> list[str]:
    """What extraction wrote before the backend route existed."""
    return tokenizer.batch_decode([[i] for i in range(len(tokenizer))])


@pytest.fixture(scope="module")
def tiny_dir():
    return tiny_model_dir()


def test_embedded_tokenizer_takes_the_backend_route_with_the_same_texts():
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    assert backend_decodes_alone(tokenizer)  # SmolLM2: the route bitlens extract takes by default
    texts = token_texts(tokenizer)
    assert len(texts) == len(tokenizer) == 49152
    assert texts == _reference(tokenizer)
    assert any(t.startswith(" ") for t in texts) and any("\ufffd" in t for t in texts)  # spaces, partial bytes


def test_tiny_tokenizer_with_added_special_tokens(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    tokenizer.add_tokens(["whalebone"])
    assert backend_decodes_alone(tokenizer)
    assert token_texts(tokenizer) == _reference(tokenizer)


def test_clean_up_of_tokenization_spaces_takes_the_generic_route(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir, clean_up_tokenization_spaces=True)
    assert not backend_decodes_alone(tokenizer)
    assert token_texts(tokenizer) == _reference(tokenizer)


def test_a_class_with_its_own_decoding_takes_the_generic_route(tiny_dir):
    base = AutoTokenizer.from_pretrained(tiny_dir)

    class Shouting(type(base)):
        def _decode(self, token_ids, **kwargs):
            return super()._decode(token_ids, **kwargs).upper() + "!"

    tokenizer = Shouting.from_pretrained(tiny_dir)
    assert not backend_decodes_alone(tokenizer)
    texts = token_texts(tokenizer)
    assert texts == _reference(tokenizer) and all(t.endswith("!") for t in texts)


def test_a_backend_that_disagrees_with_batch_decode_is_not_trusted(tiny_dir):
    base = AutoTokenizer.from_pretrained(tiny_dir)

    class Lying:
        """The real backend, except that its batch decoding drops leading spaces (as a post-processing step of a
        future transformers might do, which the route's conditions do not foresee)."""

        def __init__(self, real):
            self.real = real

        def decode_batch(self, ids, skip_special_tokens=False):
            return [t.lstrip(" ") for t in self.real.decode_batch(ids, skip_special_tokens=skip_special_tokens)]

        def __getattr__(self, name):
            return getattr(self.real, name)

    class Odd(type(base)):
        @property
        def backend_tokenizer(self):
            return Lying(self._tokenizer)

    tokenizer = Odd.from_pretrained(tiny_dir)
    assert backend_decodes_alone(tokenizer)
    ids = [[i] for i in range(len(tokenizer))]
    assert tokenizer.backend_tokenizer.decode_batch(ids) != _reference(tokenizer)  # the lie is there to catch
    assert token_texts(tokenizer) == _reference(tokenizer)
