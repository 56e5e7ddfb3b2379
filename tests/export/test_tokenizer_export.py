"""The engine directory's tokenizer.json gives the ids of the model's own tokenizer."""

import pytest
from tokenizers import Tokenizer
from transformers import CLIPTokenizer

from sdtrt.export.tokenizer_export import PROBE_PROMPTS, export_tokenizer

PROMPTS = PROBE_PROMPTS + [
    "A PHOTO OF AN ASTRONAUT",
    "line one\r\nline two\u3000full-width space",
    "cat" * 200,
    "  leading and trailing  ",
    "don't Don'T DON'T",
]


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    target = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    length = export_tokenizer(tiny_model_dir / "tokenizer", target, 77)
    assert length == 77
    return Tokenizer.from_file(str(target))


def test_ids_match_the_model_tokenizer(exported, tiny_model_dir):
    reference = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer")
    merged = 0
    for prompt in PROMPTS:
        expected = reference(prompt, padding="max_length", max_length=77, truncation=True).input_ids
        got = exported.encode(prompt).ids
        assert got == expected, prompt
        merged += sum(i >= 512 for i in got if i < reference.bos_token_id)
    assert merged > 0  # the tiny vocabulary's merges are exercised, not only its bytes


def test_long_prompts_are_cut_to_end_with_the_end_token(exported, tiny_model_dir):
    reference = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer")
    encoding = exported.encode("a " * 200)
    assert len(encoding.ids) == 77 and encoding.ids[-1] == reference.eos_token_id
    assert encoding.overflowing
