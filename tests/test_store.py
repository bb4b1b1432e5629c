"""The activation store reader: shuffled coverage, determinism, document splits, validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bitlens.data.store import ActivationStore, StoreWriter
from bitlens.io import BitlensError

DIM = 8


def make_store(path: Path, doc_lengths=(120, 45, 300, 7, 80, 200, 33, 150), shard_rows=256,
               dtype="float32") -> Path:
    """A store whose row i has value i in column 0 (and the document index in column 1), so rows can be
    identified after shuffling; documents arrive in batches as from the extractor."""
    writer = StoreWriter.open(path, settings={"test": True}, layers=[3], dim=DIM, dtype=dtype,
                              shard_rows=shard_rows, documents=lambda: [{"index": i, "id": f"d{i}"}
                                                                        for i in range(len(doc_lengths))],
                              token_texts=lambda: [f"t{i}" for i in range(50)])
    row = 0
    for doc, n in enumerate(doc_lengths):
        for start in range(0, n, 64):  # batches of at most 64 rows
            k = min(64, n - start)
            acts = np.zeros((k, DIM), dtype=np.float32)
            acts[:, 0] = np.arange(row, row + k)
            acts[:, 1] = doc
            acts[:, 2:] = np.random.default_rng(row).normal(size=(k, DIM - 2))
            meta = np.stack([np.full(k, doc), np.zeros(k), np.arange(k) // 10, np.arange(start, start + k),
                             np.arange(row, row + k) % 50], axis=1).astype(np.int32)
            writer.add({3: acts}, meta, cursor=(doc, 0), excluded={"special": 0, "first": 1}, sequences=1)
            row += k
    writer.finish()
    return path


@pytest.fixture()
def store(tmp_path) -> ActivationStore:
    return ActivationStore(make_store(tmp_path / "store"))


def ids(batches) -> np.ndarray:
    """Row ids (column 0) of the served rows, in serving order."""
    batches = list(batches)
    return torch.cat(batches)[:, 0].numpy().astype(np.int64) if batches else np.zeros(0, np.int64)


def test_plain_numpy_layout(tmp_path):
    path = make_store(tmp_path / "s")
    manifest = json.loads((path / "manifest.json").read_text())
    first = path / "shards" / manifest["shards"][0]["name"]
    acts = np.load(first / "layer_3.npy", allow_pickle=False)
    meta = np.load(first / "meta.npy", allow_pickle=False)
    assert acts.dtype == np.float32 and acts.shape == (manifest["shards"][0]["rows"], DIM)
    assert meta.shape == (len(acts), 5) and manifest["meta_columns"] == ["doc", "chunk", "sentence", "position", "token"]
    assert manifest["n_tokens"] == sum(s["rows"] for s in manifest["shards"]) == 935
    assert len(manifest["shards"]) > 2


def test_stats_match_numpy(store):
    data = store.view().rows().numpy().astype(np.float64)
    stats = store.stats(3)
    np.testing.assert_allclose(stats["mean"], data.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats["mean_sq_norm"], (data ** 2).sum(1).mean(), rtol=1e-5)
    np.testing.assert_allclose(stats["variance"], ((data - data.mean(0)) ** 2).sum(1).mean(), rtol=1e-5)


@pytest.mark.parametrize("batch_size,buffer_rows,block_rows", [(64, 200, 16), (100, 65536, 256), (7, 50, 5)])
def test_each_row_exactly_once_per_epoch(store, batch_size, buffer_rows, block_rows):
    view = store.view()
    view.buffer_rows, view.block_rows = buffer_rows, block_rows
    for epoch in range(2):
        batches = list(view.batches(batch_size, epoch=epoch, seed=1))
        assert len(batches) == view.n_batches(batch_size)
        assert all(b.shape == (batch_size, DIM) and b.dtype == torch.float32 for b in batches[:-1])
        got = ids(batches)
        assert sorted(got) == list(range(store.n_tokens))
        assert not np.array_equal(got, np.arange(store.n_tokens))  # shuffled


def test_batches_mix_documents(store):
    view = store.view()
    view.block_rows = 16
    first = next(iter(view.batches(64, epoch=0, seed=0)))
    assert len(np.unique(first[:, 1].numpy())) >= 4


def test_deterministic_and_resumable(store):
    view = store.view()
    view.buffer_rows, view.block_rows = 200, 16
    a = ids(view.batches(50, epoch=3, seed=9))
    np.testing.assert_array_equal(a, ids(view.batches(50, epoch=3, seed=9)))
    assert not np.array_equal(a, ids(view.batches(50, epoch=4, seed=9)))
    assert not np.array_equal(a, ids(view.batches(50, epoch=3, seed=10)))
    for start in (1, 4, 7, view.n_batches(50) - 1):
        np.testing.assert_array_equal(ids(view.batches(50, epoch=3, seed=9, start=start)), a[start * 50:])
    dropped = list(view.batches(50, epoch=3, seed=9, drop_last=True))
    assert len(dropped) == store.n_tokens // 50 and all(len(b) == 50 for b in dropped)


def test_split_by_document(store):
    train, val = store.split(0.25, seed=0)
    assert train.n_rows + val.n_rows == store.n_tokens
    assert set(train.doc_indices).isdisjoint(val.doc_indices)
    assert set(train.doc_indices) | set(val.doc_indices) == set(range(8)) and len(val.doc_indices) == 2
    train_ids, val_ids = ids(train.batches(32, 0, 0)), ids(val.batches(32, 0, 0))
    assert sorted(np.concatenate([train_ids, val_ids])) == list(range(store.n_tokens))
    doc_of_row = store.meta[:, 0]
    assert set(doc_of_row[val_ids]) == set(val.doc_indices)
    again, _ = store.split(0.25, seed=0)
    np.testing.assert_array_equal(again.doc_indices, train.doc_indices)
    assert len({tuple(store.split(0.25, seed=s)[1].doc_indices) for s in range(6)}) > 1  # the seed matters
    assert store.split(0.0, seed=0)[1].n_rows == 0
    assert store.document_ids == [f"d{i}" for i in range(8)]


def test_rows_and_meta_aligned(store):
    train, _ = store.split(0.25, seed=0)
    for limit in (None, 100):
        rows = train.rows(limit, seed=3).numpy()
        meta = train.meta(limit, seed=3)
        assert len(rows) == len(meta) == (limit or train.n_rows)
        row_ids = rows[:, 0].astype(np.int64)
        np.testing.assert_array_equal(meta.doc, store.meta[row_ids, 0])
        np.testing.assert_array_equal(meta.position, store.meta[row_ids, 3])
        assert meta.text == [f"t{i % 50}" for i in row_ids]
        np.testing.assert_array_equal(rows[:, 1], meta.doc)


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_manifest_shard_mismatch(tmp_path):
    path = make_store(tmp_path / "s")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["shards"][1]["rows"] += 1
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BitlensError) as info:
        ActivationStore(path)
    assert "manifest says" in _one_line(info)


def test_missing_or_wrong_shard_file(tmp_path):
    path = make_store(tmp_path / "s")
    shard = path / "shards" / "000001"
    np.save(shard / "layer_3.npy", np.zeros((3, DIM), np.float32))
    with pytest.raises(BitlensError, match="000001/layer_3.npy is float32\\[3, 8\\]"):
        ActivationStore(path)
    (shard / "layer_3.npy").unlink()
    with pytest.raises(BitlensError, match="is missing"):
        ActivationStore(path)


def test_not_a_store_and_incomplete(tmp_path):
    with pytest.raises(BitlensError, match="does not exist"):
        ActivationStore(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BitlensError, match="no manifest.json"):
        ActivationStore(tmp_path / "empty")
    (tmp_path / "empty" / "manifest.json").write_text("{")
    with pytest.raises(BitlensError, match="not valid JSON"):
        ActivationStore(tmp_path / "empty")
    StoreWriter.open(tmp_path / "inc", settings={}, layers=[0], dim=4, dtype="float16", shard_rows=10,
                     documents=lambda: [], token_texts=lambda: [])
    with pytest.raises(BitlensError, match="incomplete"):
        ActivationStore(tmp_path / "inc")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not mine")
    with pytest.raises(BitlensError, match="not an activation store"):
        StoreWriter.open(tmp_path / "other", settings={}, layers=[0], dim=4, dtype="float16", shard_rows=10,
                         documents=lambda: [], token_texts=lambda: [], overwrite=True)
    assert (tmp_path / "other" / "notes.txt").exists()  # --overwrite never deletes a folder that is not a store


def test_layer_choice_and_bad_fraction(store):
    with pytest.raises(BitlensError, match="layer 5 is not in store"):
        store.view(5)
    with pytest.raises(BitlensError, match="validation fraction"):
        store.split(1.0, seed=0)


def test_float16_overflow_is_refused(tmp_path):
    writer = StoreWriter.open(tmp_path / "s", settings={}, layers=[0], dim=2, dtype="float16", shard_rows=1,
                              documents=lambda: [], token_texts=lambda: [])
    with pytest.raises(BitlensError, match="float16 range"):
        writer.add({0: np.array([[1e6, 0.0]], np.float32)}, np.zeros((1, 5), np.int32), cursor=(0, 1),
                   excluded={}, sequences=1)


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory) -> ActivationStore:
    return ActivationStore(make_store(tmp_path_factory.mktemp("shared") / "s", shard_rows=100))


from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(batch_size=st.integers(1, 300), buffer_rows=st.integers(1, 1000), block_rows=st.integers(1, 400),
       epoch=st.integers(0, 3), val=st.sampled_from([0.0, 0.3]), start=st.integers(0, 5))
def test_batches_partition_any_configuration(shared_store, batch_size, buffer_rows, block_rows, epoch, val, start):
    train, _ = shared_store.split(val, seed=epoch)
    train.buffer_rows, train.block_rows = buffer_rows, block_rows
    full = ids(train.batches(batch_size, epoch=epoch, seed=2))
    expected = np.flatnonzero(np.isin(shared_store.meta[:, 0], train.doc_indices))
    np.testing.assert_array_equal(np.sort(full), expected)  # every train row once, no val row
    np.testing.assert_array_equal(ids(train.batches(batch_size, epoch=epoch, seed=2, start=start)),
                                  full[start * batch_size:])


def test_split_leaves_out_attention_sink_outliers(tmp_path):
    """A row with 100x the typical norm (an attention sink) is out of both split views unless asked for."""
    writer = StoreWriter.open(tmp_path / "s", settings={}, layers=[3], dim=DIM, dtype="float32", shard_rows=64,
                              documents=lambda: [{"index": i, "id": f"d{i}"} for i in range(4)],
                              token_texts=lambda: ["t"])
    for doc in range(4):
        acts = np.random.default_rng(doc).normal(size=(40, DIM)).astype(np.float32)
        if doc == 2:
            acts[1] *= 100.0
        meta = np.stack([np.full(40, doc), np.zeros(40), np.zeros(40), np.arange(40), np.zeros(40)], 1)
        writer.add({3: acts}, meta.astype(np.int32), cursor=(doc, 0), excluded={}, sequences=1)
    writer.finish()
    store = ActivationStore(tmp_path / "s")
    assert store.stats(3)["outliers"] == 1 and np.flatnonzero(store.outliers(3)).tolist() == [81]
    train, val = store.split(0.5, seed=0)
    assert train.n_rows + val.n_rows == 159
    assert float(torch.cat([train.rows(), val.rows()]).norm(dim=1).max()) < 20
    kept_train, kept_val = store.split(0.5, seed=0, keep_outliers=True)
    assert kept_train.n_rows + kept_val.n_rows == 160


def _batches_before_issue18(view, batch_size, epoch, seed, start=0):
    """The shuffling buffer as written before issue 18 (cast and permute each group whole): the batches of a
    store must not change, or runs checkpointed before would resume on other rows."""
    rng = np.random.default_rng([seed, epoch])
    blocks = view._blocks()[rng.permutation(len(view._blocks()))]
    sizes = blocks[:, 2] - blocks[:, 1]
    groups, current, filled = [], [], 0
    for i, size in enumerate(sizes):
        if current and filled + size > view.buffer_rows:
            groups.append(current)
            current, filled = [], 0
        current.append(i)
        filled += int(size)
    if current:
        groups.append(current)
    skip, position, carry = start * batch_size, 0, np.zeros((0, view.dim), dtype=np.float32)
    for group in groups:
        n = int(sizes[group].sum())
        perm = rng.permutation(n)
        if position + n <= skip:
            position += n
            continue
        data = np.concatenate([view._arrays[s][a:b] for s, a, b in blocks[group]]).astype(np.float32)[perm]
        if position < skip:
            data = data[skip - position:]
        position += n
        if len(carry):
            data = np.concatenate([carry, data])
        full = len(data) // batch_size * batch_size
        for i in range(0, full, batch_size):
            yield torch.from_numpy(data[i:i + batch_size])
        carry = data[full:]
    if len(carry):
        yield torch.from_numpy(np.ascontiguousarray(carry))


@pytest.fixture(scope="module")
def shared_store_f16(tmp_path_factory) -> ActivationStore:
    return ActivationStore(make_store(tmp_path_factory.mktemp("f16") / "s", shard_rows=100, dtype="float16"))


@settings(max_examples=30, deadline=None)
@given(batch_size=st.integers(1, 300), buffer_rows=st.integers(1, 1000), block_rows=st.integers(1, 400),
       epoch=st.integers(0, 3), start=st.integers(0, 5), f16=st.booleans())
def test_batches_are_those_of_the_whole_group_shuffle(shared_store, shared_store_f16, batch_size, buffer_rows,
                                                      block_rows, epoch, start, f16):
    """Issue 18: each batch is gathered from the group in the store's dtype and cast on its own; the rows, their
    order and their float32 values are exactly those of casting and permuting the whole group first."""
    store = shared_store_f16 if f16 else shared_store
    view = store.view()
    view.buffer_rows, view.block_rows = buffer_rows, block_rows
    got = list(view.batches(batch_size, epoch=epoch, seed=2, start=start))
    want = list(_batches_before_issue18(view, batch_size, epoch, 2, start))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and g.is_contiguous()
        assert torch.equal(g, w)


def test_read_blocks_by_pread_equals_slicing(tmp_path):
    """Issue 18: the shuffling buffer reads its blocks with os.preadv from the shards' .npy files (into a reused
    buffer when given one); the rows must be those of slicing the memory maps, for both dtypes, and arrays that
    are not whole-file maps (a slice, an in-memory array) are sliced."""
    from bitlens.data.store_format import read_blocks

    for dtype in ("float16", "float32"):
        view = ActivationStore(make_store(tmp_path / dtype, dtype=dtype)).split(0.0, 0, 3)[0]
        arrays = view._arrays
        blocks = view._blocks()[np.random.default_rng(0).permutation(len(view._blocks()))]
        expected = np.concatenate([arrays[s][a:b] for s, a, b in blocks])
        assert np.array_equal(read_blocks(arrays, blocks), expected)
        buffer = np.full((len(expected) + 5, DIM), -1, dtype=arrays[0].dtype)
        out = read_blocks(arrays, blocks, buffer)
        assert np.shares_memory(out, buffer) and np.array_equal(out, expected)
        small = np.empty((3, DIM), dtype=arrays[0].dtype)  # too small: a fresh array instead
        assert np.array_equal(read_blocks(arrays, blocks, small), expected)
        in_memory = [np.array(a) for a in arrays]
        assert np.array_equal(read_blocks(in_memory, blocks), expected)
        sliced = [a[1:] for a in arrays]  # a view of a map: its file offset is not the array's start
        assert np.array_equal(read_blocks(sliced, blocks[:2]),
                              np.concatenate([sliced[s][a:b] for s, a, b in blocks[:2]]))
