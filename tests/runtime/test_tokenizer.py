import logging

import numpy as np
import pytest

from sdtrt.runtime.tokenizer import PromptTokenizer


def test_pads_truncates_and_warns(tiny_engine_dir, caplog):
    tokenizer = PromptTokenizer(tiny_engine_dir / "tokenizer" / "tokenizer.json")
    assert tokenizer.length == 77
    with caplog.at_level(logging.WARNING):
        ids = tokenizer(["", "a photo of a cat", "word " * 100])
    assert ids.shape == (3, 77) and ids.dtype == np.int32
    start, end = ids[0, 0], ids[0, 1]
    assert (ids[0, 1:] == end).all()  # empty prompt: start, end, then end-token padding
    assert ids[2, 0] == start and ids[2, -1] == end
    assert len(caplog.records) == 1 and "truncated" in caplog.records[0].getMessage()


@pytest.fixture(scope="module")
def sd15_tokenizer(tmp_path_factory):
    """The tokenizer.json a build writes for SD 1.5's tokenizer (CLIP's real vocabulary)."""
    from sdtrt.export.clip_vocab import real_clip_merges, write_clip_files
    from sdtrt.export.tokenizer_export import export_tokenizer

    folder = tmp_path_factory.mktemp("sd15-tokenizer")
    write_clip_files(folder / "source", real_clip_merges())
    export_tokenizer(folder / "source", folder / "tokenizer.json", 77)
    return PromptTokenizer(folder / "tokenizer.json"), folder / "source"


@pytest.mark.parametrize("words", [76, 90, 200])
def test_truncation_warning_counts_the_dropped_tokens(sd15_tokenizer, caplog, words):
    from transformers import CLIPTokenizer

    tokenizer, source = sd15_tokenizer
    prompt = " ".join(["landscape"] * words)
    untruncated = CLIPTokenizer.from_pretrained(source)(prompt).input_ids
    assert len(untruncated) == words + 2  # one token per word, plus start and end
    with caplog.at_level(logging.WARNING):
        tokenizer([prompt])
    dropped = len(untruncated) - 77
    assert dropped == words - 75
    ours = [r for r in caplog.records if r.name == "sdtrt.runtime.tokenizer"]
    assert [r.getMessage().split(":")[0] for r in ours] == [
        f"prompt truncated to 77 tokens ({dropped} tokens dropped)"
    ]


def test_a_prompt_that_fits_is_not_reported(sd15_tokenizer, caplog):
    tokenizer, _ = sd15_tokenizer
    with caplog.at_level(logging.WARNING):
        tokenizer([" ".join(["landscape"] * 75)])
    assert not [r for r in caplog.records if r.name == "sdtrt.runtime.tokenizer"]
