"""Text -> token ids for the CLIP and SigLIP text towers, in the server (no transformers, open_clip or ftfy).

ClipTokenizer    OpenAI CLIP's byte-level BPE, our own code: open_clip's ``bpe_simple_vocab_16e6.txt.gz``
                 or a Hugging Face CLIP folder's ``vocab.json`` + ``merges.txt``; open_clip's layout
                 (start, tokens, end, zeros)
JsonTokenizer    a Hugging Face ``tokenizer.json`` (SigLIP's SentencePiece, converted), run by the
                 ``tokenizers`` library as transformers runs it, padded to the context; optionally
                 open_clip's ``canonicalize`` cleaning first (SigLIP's)
load_tokenizer   the one of them a model folder's files make, by the text tower's ``tokenizer`` kind
"""

from __future__ import annotations

import gzip
import html
import json
import string
import unicodedata
import zlib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from itertools import islice, pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    import tokenizers

TOKENIZER_JSON = "tokenizer.json"  # a Hugging Face fast tokenizer (JsonTokenizer)
HF_VOCAB, HF_MERGES = "vocab.json", "merges.txt"  # a Hugging Face CLIP folder's BPE (ClipTokenizer)
OPENCLIP_BPE = "bpe_simple_vocab_16e6.txt.gz"  # the file open_clip (and OpenAI's clip) ship (ClipTokenizer)
# Every file a tokenizer is read from, in load_tokenizer's order of preference.
TOKENIZER_FILES: tuple[str, ...] = (TOKENIZER_JSON, HF_VOCAB, HF_MERGES, OPENCLIP_BPE)
# The kinds load_tokenizer reads (a text tower's ``tokenizer`` field): CLIP's BPE files, or tokenizer.json.
KINDS: tuple[str, ...] = ("clip", "json")

DEFAULT_CONTEXT_LENGTH = 77  # OpenAI CLIP's
# OpenAI CLIP's vocabulary uses the first 48894 merges of the .gz: 256 bytes x 2 (with and without
# </w>) + 48894 merges + 2 special tokens = 49408 ids. Line 0 of the file is a version header.
OPENCLIP_MERGES = 49152 - 256 - 2
END_OF_WORD = "</w>"
# The .gz's special tokens as open_clip names them (OpenAI's clip and Hugging Face say <|startoftext|>,
# <|endoftext|>); the ids are the same, 49406 and 49407. Each name, in a text, is that token.
OPENCLIP_SPECIAL = ("<start_of_text>", "<end_of_text>")
HF_SPECIAL = ("<|startoftext|>", "<|endoftext|>")
# CLIP's pre-tokenizer (after the special tokens): contractions, letter runs, single digits, runs of the rest.
CLIP_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_PUNCTUATION = str.maketrans("", "", string.punctuation)


class TokenizerError(ValueError):
    """Tokenizer files that are missing, unreadable or inconsistent, or settings they cannot serve."""


class Tokenizer(Protocol):
    """What a text tower needs of a tokenizer."""

    @property
    def context_length(self) -> int:
        """The width of every row ``encode`` returns."""
        ...

    @property
    def files(self) -> tuple[str, ...]:
        """The names of the files it was read from (what an archive must carry)."""
        ...

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> token ids (B, context_length), int64, padded and truncated."""
        ...


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> character table: the 188 printable bytes stand for themselves, the
    other 68 for chr(256 + n), so BPE never sees a space or a control character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(b for b in range(256) if b not in table)})
    return table


def clean_lower(text: str) -> str:
    """open_clip's ``clean='lower'`` without ftfy: NFC, HTML entities unescaped twice, whitespace
    collapsed and stripped, lower case.

    Identical to open_clip for text that ``ftfy.fix_text`` leaves unchanged; ftfy's repairs (mojibake,
    curly quotes, full-width and ligature characters, ...) are not made.
    """
    text = html.unescape(html.unescape(unicodedata.normalize("NFC", text)))
    return " ".join(text.split()).lower()


def canonicalize_text(text: str) -> str:
    """open_clip's (big_vision's) ``canonicalize_text``: underscores to spaces, ASCII punctuation
    removed, lower case, whitespace collapsed and stripped."""
    return " ".join(text.replace("_", " ").translate(_PUNCTUATION).lower().split())


def clean_canonicalize(text: str) -> str:
    """open_clip's ``clean='canonicalize'`` (SigLIP's) without ftfy: NFC, HTML entities unescaped
    twice, then ``canonicalize_text``. Identical to open_clip for text ftfy leaves unchanged."""
    return canonicalize_text(html.unescape(html.unescape(unicodedata.normalize("NFC", text))))


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise TypeError("encode takes a sequence of texts, not one str: encode([text])")


class ClipTokenizer:
    """OpenAI CLIP's byte-level BPE (open_clip's ``SimpleTokenizer``, transformers' ``CLIPTokenizer``).

    Text is cleaned (``clean_lower``), split by CLIP's pattern, each piece's UTF-8 bytes mapped to
    characters and merged by rank; a piece that is a special token's name is that token. Words'
    merges are kept in an LRU cache of ``cache_size`` words (0: none).
    """

    def __init__(
        self,
        vocab: Mapping[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        special: tuple[str, str],
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        files: tuple[str, ...] = (),
        cache_size: int = 16384,
    ) -> None:
        """``vocab``: token -> id; ``merges`` in rank order; ``special``: the start and end tokens' names."""
        if context_length < 2:
            raise TokenizerError(f"context_length {context_length}: CLIP's rows need at least 2 (start and end of text)")
        symbols = list(bytes_to_unicode().values())
        needed = [*special, *symbols, *(s + END_OF_WORD for s in symbols), *(a + b for a, b in merges)]
        missing = [token for token in needed if token not in vocab]
        if missing:  # every id _bpe can make must exist
            raise TokenizerError(f"the vocabulary of {', '.join(files) or 'a CLIP BPE'} lacks {len(missing)} tokens, {missing[:5]} first")
        self.vocab: dict[str, int] = dict(vocab)
        self.ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(merges)}
        self.context_length = context_length
        self.files = files
        self.sot_token_id, self.eot_token_id = self.vocab[special[0]], self.vocab[special[1]]
        self._special = {token: self.vocab[token] for token in special}
        self._byte_encoder = bytes_to_unicode()
        import regex  # type: ignore[import-untyped, unused-ignore]  # only a CLIP text tower needs it (the text extra); no stubs

        names = "|".join(regex.escape(token) for token in special)
        # IGNORECASE as open_clip (the text is lower case already; it only matters to the special names)
        self._pattern = regex.compile(f"{names}|{CLIP_PATTERN}", regex.IGNORECASE)
        self._word_ids = lru_cache(maxsize=cache_size)(self._bpe)

    @classmethod
    def from_bpe_file(cls, path: str | Path, context_length: int = DEFAULT_CONTEXT_LENGTH, **kw: Any) -> ClipTokenizer:
        """open_clip's ``bpe_simple_vocab_16e6.txt.gz``: its first 48894 merges make the vocabulary."""
        path = Path(path)
        try:
            lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
        except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
            raise TokenizerError(f"cannot read {path} as open_clip's gzipped BPE merges: {e}") from e
        # the file holds 262,144 merges; only CLIP's first ones are read (and checked)
        merges = [_merge(line, path) for line in islice(filter(str.strip, lines[1:]), OPENCLIP_MERGES)]
        if len(merges) < OPENCLIP_MERGES:
            raise TokenizerError(f"{path} holds {len(merges)} merges, not CLIP's {OPENCLIP_MERGES}")
        symbols = list(bytes_to_unicode().values())
        tokens = [*symbols, *(s + END_OF_WORD for s in symbols), *(a + b for a, b in merges), *OPENCLIP_SPECIAL]
        vocab = {token: i for i, token in enumerate(tokens)}
        return cls(vocab, merges, special=OPENCLIP_SPECIAL, context_length=context_length, files=(path.name,), **kw)

    @classmethod
    def from_hf_files(cls, vocab: str | Path, merges: str | Path, context_length: int = DEFAULT_CONTEXT_LENGTH, **kw: Any) -> ClipTokenizer:
        """A Hugging Face CLIP folder's ``vocab.json`` (token -> id) and ``merges.txt`` (every merge,
        after an optional ``#version`` line); the special tokens are ``<|startoftext|>``, ``<|endoftext|>``."""
        vocab, merges = Path(vocab), Path(merges)
        try:
            table = json.loads(vocab.read_text(encoding="utf-8"))
            lines = merges.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerError(f"cannot read a CLIP vocabulary from {vocab} and {merges}: {e}") from e
        if not isinstance(table, dict) or not all(isinstance(i, int) for i in table.values()):
            raise TokenizerError(f"{vocab} is not a JSON object of token -> id")
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        pairs = [_merge(line, merges) for line in lines if line.strip()]
        return cls(table, pairs, special=HF_SPECIAL, context_length=context_length, files=(vocab.name, merges.name), **kw)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (B, context_length) int64: start, tokens, end, zeros; a text too long for the row
        keeps its first context_length - 2 tokens and ends with the end token (open_clip's layout)."""
        _check_texts(texts)
        out = torch.zeros(len(texts), self.context_length, dtype=torch.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.token_ids(text, limit=self.context_length - 2), self.eot_token_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out

    def token_ids(self, text: str, limit: int | None = None) -> list[int]:
        """One text's ids, without the start and end tokens; stops after ``limit`` ids if given."""
        ids: list[int] = []
        for match in self._pattern.finditer(clean_lower(text)):
            if limit is not None and len(ids) >= limit:
                break
            piece = match.group()
            if piece in self._special:
                ids.append(self._special[piece])
            else:
                ids.extend(self._word_ids("".join(self._byte_encoder[b] for b in piece.encode("utf-8"))))
        return ids[:limit]

    def _bpe(self, word: str) -> tuple[int, ...]:
        """One byte-encoded piece's ids: its characters (the last marked ``</w>``), pairs merged lowest
        rank first, every occurrence of that pair left to right, until no pair has a rank."""
        symbols = [*word[:-1], word[-1] + END_OF_WORD]
        while len(symbols) > 1:
            pair = min(pairwise(symbols), key=lambda p: self.ranks.get(p, len(self.ranks)))
            if pair not in self.ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return tuple(self.vocab[s] for s in symbols)


def _merge(line: str, path: Path) -> tuple[str, str]:
    parts = line.split()
    if len(parts) != 2:
        raise TokenizerError(f"{path}: {line!r} is not a merge (two symbols)")
    return parts[0], parts[1]


class JsonTokenizer:
    """A Hugging Face ``tokenizer.json``, run by the ``tokenizers`` library as transformers'
    ``PreTrainedTokenizerFast(tokenizer_file=path)(texts, padding="max_length", truncation=True,
    max_length=context_length)`` runs it: the file's normaliser, pre-tokeniser, model and
    post-processor; truncated (room left for the post-processor's tokens) and padded to the context,
    on the sides the file says (right if it does not).

    The pad id is the file's (its padding's pad token) when it has a padding configuration, else
    ``pad_id``. ``canonicalize``: open_clip's ``clean='canonicalize'`` first (``clean_canonicalize``, SigLIP's).
    """

    def __init__(self, path: str | Path, context_length: int, pad_id: int | None = None, canonicalize: bool = False) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        path = Path(path)
        try:
            tokenizer = RustTokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception for unreadable and invalid files
            raise TokenizerError(f"cannot read {path} as a Hugging Face tokenizer.json: {e}") from e
        padding, truncation = tokenizer.padding, tokenizer.truncation
        if padding is not None:  # transformers: the pad token's id, else the id the file states
            pad_token = str(padding["pad_token"])
            pad = tokenizer.token_to_id(pad_token)
            pad_id = int(padding["pad_id"]) if pad is None else pad
        elif pad_id is None:
            raise TokenizerError(f"{path} has no padding configuration: pass the pad token's id (pad_id)")
        else:
            pad_token = tokenizer.id_to_token(pad_id) or ""
        size = tokenizer.get_vocab_size(with_added_tokens=True)
        if not 0 <= pad_id < size:
            raise TokenizerError(f"pad_id {pad_id} is not an id of {path} (0 ... {size - 1})")
        special = tokenizer.num_special_tokens_to_add(is_pair=False)
        if context_length <= special:
            raise TokenizerError(f"context_length {context_length} leaves no room beside {path}'s {special} special tokens")
        tokenizer.enable_truncation(
            max_length=context_length, stride=0, strategy="longest_first", direction=truncation["direction"] if truncation else "right"
        )
        direction = padding["direction"] if padding else "right"
        pad_type_id = padding["pad_type_id"] if padding else 0
        tokenizer.enable_padding(direction=direction, pad_id=pad_id, pad_type_id=pad_type_id, pad_token=pad_token, length=context_length)
        self._tokenizer: tokenizers.Tokenizer = tokenizer
        self.context_length = context_length
        self.pad_id = pad_id
        self.canonicalize = canonicalize
        self.files: tuple[str, ...] = (path.name,)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Texts -> (B, context_length) int64 ids, padded with ``pad_id``."""
        _check_texts(texts)
        if not texts:
            return torch.zeros(0, self.context_length, dtype=torch.int64)
        batch = [clean_canonicalize(t) for t in texts] if self.canonicalize else list(texts)
        return torch.tensor([e.ids for e in self._tokenizer.encode_batch(batch)], dtype=torch.int64)


def load_tokenizer(folder: Path, kind: str, context_length: int, **kw: Any) -> Tokenizer:
    """The tokenizer of ``kind`` (one of KINDS, a text tower's ``tokenizer``) that ``folder``'s files make.

    ``json``: ``tokenizer.json`` -> JsonTokenizer (``pad_id``, ``canonicalize`` passed on).
    ``clip``: ``vocab.json`` + ``merges.txt``, else ``bpe_simple_vocab_16e6.txt.gz`` -> ClipTokenizer
    (``canonicalize`` must be false: CLIP has no such cleaning).
    A folder without them raises ``TokenizerError`` naming the files looked for and those present.
    """
    if kind not in KINDS:
        raise TokenizerError(f"tokenizer kind {kind!r} is not one of {list(KINDS)}")
    folder = Path(folder)
    if not folder.is_dir():
        raise TokenizerError(f"tokenizer folder {folder} does not exist or is not a folder")
    present = sorted(p.name for p in folder.iterdir() if p.is_file())
    if kind == "json" and TOKENIZER_JSON in present:
        return JsonTokenizer(folder / TOKENIZER_JSON, context_length, **kw)
    if kind == "clip":
        if kw.pop("canonicalize", False):
            raise TokenizerError("canonicalize is SigLIP's cleaning (a json tokenizer's): CLIP's BPE lower-cases only")
        if HF_VOCAB in present and HF_MERGES in present:
            return ClipTokenizer.from_hf_files(folder / HF_VOCAB, folder / HF_MERGES, context_length, **kw)
        if OPENCLIP_BPE in present:
            return ClipTokenizer.from_bpe_file(folder / OPENCLIP_BPE, context_length, **kw)
    wanted = TOKENIZER_JSON if kind == "json" else f"{HF_VOCAB} + {HF_MERGES}, or {OPENCLIP_BPE}"
    hint = ""
    if kind == "clip" and TOKENIZER_JSON in present:
        hint = f"; it has {TOKENIZER_JSON}, which the json kind reads"
    elif kind == "json" and {HF_VOCAB, HF_MERGES, OPENCLIP_BPE} & set(present):
        hint = "; it has CLIP's BPE files, which the clip kind reads"
    elif "spiece.model" in present or "sentencepiece.bpe.model" in present:
        hint = (
            "; a SentencePiece model (SiglipTokenizer's spiece.model) is not read: give TOKENIZER= a folder with its fast "
            "tokenizer's tokenizer.json (transformers' convert_slow_tokenizer writes one)"
        )
    elif (HF_VOCAB in present) != (HF_MERGES in present):
        hint = f"; {HF_VOCAB} and {HF_MERGES} are read together"
    raise TokenizerError(
        f"no {kind} tokenizer in {folder}: looked for {wanted}; it holds {', '.join(present) if present else 'no files'}{hint}"
    )
