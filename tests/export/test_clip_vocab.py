"""CLIP's real vocabulary rebuilt offline from its merge list, and the tiny preset's small one."""

import gzip
import json

import pytest
from transformers import CLIPTokenizer

from sdtrt.errors import ModelSourceError
from sdtrt.export.clip_vocab import real_clip_merges, tiny_clip_merges, write_clip_files


def test_real_vocabulary_gives_clip_ids(tmp_path):
    merges = real_clip_merges()
    assert len(merges) == 48894
    assert write_clip_files(tmp_path, merges) == 49408
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path)
    ids = tokenizer("a photo of an astronaut riding a horse on mars").input_ids
    assert ids == [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]


def test_tiny_vocabulary_has_merges_and_clip_layout(tmp_path):
    merges = tiny_clip_merges()
    assert 50 <= len(merges) <= 200
    size = write_clip_files(tmp_path, merges)
    vocab = json.loads((tmp_path / "vocab.json").read_text())
    assert size == len(vocab) == 512 + len(merges) + 2
    assert vocab["a</w>"] == 320 and vocab["<|endoftext|>"] == size - 1
    assert (
        json.loads((tmp_path / "tokenizer_config.json").read_text())["pad_token"] == "<|endoftext|>"
    )


def test_merges_ship_with_the_package_and_damage_is_one_line(tmp_path, monkeypatch):
    from sdtrt.export import clip_vocab

    assert clip_vocab.REAL_MERGES_FILE.is_file()
    monkeypatch.setattr(clip_vocab, "REAL_MERGES_FILE", tmp_path / "missing.txt.gz")
    with pytest.raises(ModelSourceError, match=r"cannot be read .*reinstall sdtrt"):
        real_clip_merges()
    damaged = tmp_path / "damaged.txt.gz"
    damaged.write_bytes(gzip.compress(b"#version: 0.2\na b\n"))
    monkeypatch.setattr(clip_vocab, "REAL_MERGES_FILE", damaged)
    with pytest.raises(ModelSourceError, match=r"is damaged; reinstall sdtrt"):
        real_clip_merges()
