import logging

import numpy as np

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
