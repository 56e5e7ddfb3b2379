"""CLIP tokenizer files (vocab.json, merges.txt, tokenizer_config.json) for the presets.

CLIP's vocabulary is laid out from its BPE merge list: the 256 byte symbols, the same with the
end-of-word marker `</w>`, one entry per merge, then the start and end tokens. `real_clip_files`
rebuilds the vocabulary CLIP was trained with from its merge list, which ships with sdtrt
(data/clip_merges.txt.gz, under CLIP's MIT license); `tiny_clip_files` learns a small merge list
so that the tiny preset still exercises merges.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from sdtrt.errors import ModelSourceError

START, END = "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 77
# CLIP's pre-tokenizer: its special tokens, English contractions, letter runs, single digits, and
# runs of anything else but spaces.
CLIP_SPLIT = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)
REAL_MERGE_COUNT = 49152 - 256 - 2  # the slice of the merge file CLIP was trained with
# That slice, trimmed from CLIP's bpe_simple_vocab_16e6.txt: 0.2 MB instead of a 1.4 MB file
# whose usual carrier (open-clip-torch) would pull torchvision and timm into every install.
REAL_MERGES_FILE = Path(__file__).resolve().parent / "data" / "clip_merges.txt.gz"

TINY_CORPUS = [
    "a photo of an astronaut riding a horse on mars",
    "a painting of a castle in the mountains at sunset, oil on canvas",
    "portrait of a cat wearing a hat, highly detailed, sharp focus",
    "a watercolor landscape with a river and trees in the morning light",
    "an ancient city at night, cinematic lighting, trending on artstation",
    "a bowl of fruit on a wooden table, still life, soft shadows",
    "a red sports car driving through the desert, photorealistic",
    "a cozy cabin in a snowy forest, warm light in the windows",
    "the portrait of an old man with a beard, black and white photograph",
    "a futuristic robot standing in the rain, neon reflections",
]


def byte_symbols() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0-255, in CLIP's order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    symbols = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in symbols:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in printable] + [symbols[b] for b in range(256) if b not in printable]


def vocab_from_merges(merges: list[tuple[str, str]]) -> dict[str, int]:
    base = byte_symbols()
    tokens = base + [s + "</w>" for s in base] + ["".join(m) for m in merges] + [START, END]
    return {token: index for index, token in enumerate(tokens)}


def write_clip_files(directory: Path, merges: list[tuple[str, str]], pad_token: str = END) -> int:
    """Write a CLIP tokenizer as diffusers lays it out; return its vocabulary size."""
    vocab = vocab_from_merges(merges)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(" ".join(m) for m in merges)]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": START,
        "eos_token": END,
        "unk_token": END,
        "pad_token": pad_token,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": True,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    specials = {"bos_token": START, "eos_token": END, "unk_token": END, "pad_token": pad_token}
    (directory / "special_tokens_map.json").write_text(
        json.dumps(specials, indent=2), encoding="utf-8"
    )
    return len(vocab)


def real_clip_merges() -> list[tuple[str, str]]:
    """CLIP's merge list, from the copy that ships with sdtrt."""
    try:
        lines = gzip.decompress(REAL_MERGES_FILE.read_bytes()).decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise ModelSourceError(
            f"CLIP's merge list {REAL_MERGES_FILE} cannot be read ({error}); "
            "reinstall sdtrt (`pip install --force-reinstall sdtrt`)"
        ) from error
    pairs = [line.split() for line in lines[1 : REAL_MERGE_COUNT + 1]]
    if len(pairs) != REAL_MERGE_COUNT or any(len(pair) != 2 for pair in pairs):
        raise ModelSourceError(
            f"CLIP's merge list {REAL_MERGES_FILE} is damaged; "
            "reinstall sdtrt (`pip install --force-reinstall sdtrt`)"
        )
    return [(a, b) for a, b in pairs]


def tiny_clip_merges(max_merges: int = 200) -> list[tuple[str, str]]:
    """A small merge list learned from a fixed corpus: a real BPE, just a very small one."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=512 + max_merges,
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tokenizer.train_from_iterator(TINY_CORPUS, trainer)
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return [(a, b) for a, b in merges][:max_merges]
