"""A Hugging Face CLIP tokenizer's files, made from open_clip's BPE vocabulary (nothing downloaded)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from open_clip import tokenizer as open_clip_tokenizer

from vitscope.model.tokenizer import HF_MERGES, HF_VOCAB


def write_hf_clip_tokenizer(folder: Path) -> Path:
    """``folder``'s vocab.json and merges.txt, written from open_clip's .gz with open_clip's byte
    table (the layout of openai/clip-vit-*'s files)."""
    with gzip.open(open_clip_tokenizer.default_bpe()) as f:
        merges = f.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(open_clip_tokenizer.bytes_to_unicode().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m.split()) for m in merges), "<|startoftext|>", "<|endoftext|>"]
    (folder / HF_VOCAB).write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / HF_MERGES).write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder
