"""The text towers' tokenizers (vitscope/model/tokenizer.py) against what they reproduce: ClipTokenizer
against open_clip's SimpleTokenizer (its .gz) and transformers' CLIPTokenizer (a Hugging Face
folder's vocab.json + merges.txt, written here from the .gz); JsonTokenizer against transformers'
PreTrainedTokenizerFast on tokenizer.json files built here, with open_clip's canonicalize cleaning;
load_tokenizer's choice of files and its errors."""

from __future__ import annotations

import gzip
import html
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.tokenizers import write_hf_clip_tokenizer
from vitscope.model.tokenizer import (
    HF_MERGES,
    HF_VOCAB,
    OPENCLIP_BPE,
    TOKENIZER_FILES,
    TOKENIZER_JSON,
    ClipTokenizer,
    JsonTokenizer,
    TokenizerError,
    canonicalize_text,
    clean_canonicalize,
    clean_lower,
    load_tokenizer,
)

open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer", reason="open_clip_torch (and ftfy), the reference CLIP tokenizer")
transformers = pytest.importorskip("transformers", reason="transformers is pinned in requirements.txt: make install")
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors  # noqa: E402 (after the importorskip)

EOT = 49407
CORPUS = [
    "a photo of a cat",
    "A PHOTO OF A DOG.",
    "",
    "   ",
    "Hello, world! How's it going?",
    "don't, can't, won't; I'm, you're, we've, they'll, she'd",
    "it's John's car and the dogs' bowls",
    "the year 2024: 3.14159, 1,000,000 and the 42nd street",
    "x = (a + b) * c / d - e % f ^ g",
    "email@example.com https://example.org/path?q=1&r=2",
    "#hashtag @mention $100 50% off!!!",
    "café naïve résumé façade Zürich",
    "e\u0301cole",  # a decomposed accent: NFC (ftfy's, and ours) composes it
    "ελληνικά γράμματα",
    "Москва и Санкт-Петербург",
    "東京タワー 中文测试 한국어",
    "مرحبا بالعالم",
    "🐶🐱 emoji 👨\u200d👩\u200d👧 family, ❤️ heart",
    "Tom &amp; Jerry",
    "&lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;single&#39;",
    "&amp;amp; escaped twice",
    "tabs\tand\nnewlines\r\nand  multiple   spaces  ",
    "a\u00a0non-breaking\u3000ideographic space",
    "UPPER lower MiXeD",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a" * 300,
    "!!!???...---",
    "snake_case_words and kebab-case-words",
    "½ ² ³ numbers",
    "'quoted' \"double\" `backtick`",
    "a photo of <|endoftext|> a dog",  # Hugging Face's special token name (plain text to open_clip)
    "a photo of <end_of_text> a dog",  # open_clip's (plain text to Hugging Face)
    " ".join(["a photo of a very long caption, with commas"] * 20),  # truncated at 77
    "word " * 200,
]


@pytest.fixture(scope="module")
def reference() -> Any:
    return open_clip_tokenizer.SimpleTokenizer()


@pytest.fixture(scope="module")
def clip() -> ClipTokenizer:
    return ClipTokenizer.from_bpe_file(open_clip_tokenizer.default_bpe())


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face CLIP folder's vocab.json and merges.txt (``write_hf_clip_tokenizer``), and the .gz itself."""
    folder = write_hf_clip_tokenizer(tmp_path_factory.mktemp("clip"))
    shutil.copy(open_clip_tokenizer.default_bpe(), folder / OPENCLIP_BPE)
    return folder


def hf_ids(tokenizer: Any, texts: list[str], length: int) -> torch.Tensor:
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=length)
    return torch.tensor(encoded["input_ids"], dtype=torch.int64)


# ClipTokenizer


@pytest.mark.parametrize("context_length", [77, 16, 2])
def test_clip_equals_open_clip(clip: ClipTokenizer, reference: Any, context_length: int) -> None:
    ours = ClipTokenizer.from_bpe_file(open_clip_tokenizer.default_bpe(), context_length) if context_length != 77 else clip
    ids = ours.encode(CORPUS)
    assert ids.dtype == torch.int64 and ids.shape == (len(CORPUS), context_length)
    assert torch.equal(ids, reference(CORPUS, context_length=context_length))
    assert (ids == EOT).any(dim=1).all()  # every row ends, truncated or not
    assert ours.eot_token_id == EOT and ours.sot_token_id == EOT - 1 and ours.files == (OPENCLIP_BPE,)


def test_clip_layout(clip: ClipTokenizer) -> None:
    ids = clip.encode(["a photo of a cat", "word " * 200]).tolist()
    assert ids[0] == [49406, 320, 1125, 539, 320, 2368, EOT] + [0] * 70  # start, tokens, end, zeros
    assert ids[1] == [49406] + [2653] * 75 + [EOT]  # the first 75 tokens, then the end token
    assert clip.encode([]).shape == (0, 77)
    with pytest.raises(TypeError, match="encode\\(\\[text\\]\\)"):
        clip.encode("a photo")


def test_the_cleaning_is_open_clips_for_what_ftfy_leaves_unchanged() -> None:
    import ftfy

    for text in CORPUS:
        assert clean_lower(text) == open_clip_tokenizer.get_clean_fn("lower")(text), text
        assert clean_canonicalize(text) == open_clip_tokenizer.get_clean_fn("canonicalize")(text), text
        assert canonicalize_text(text) == open_clip_tokenizer.canonicalize_text(text), text
    # ftfy's repairs are not made: curly quotes, mojibake, ligatures, full-width letters. Repaired
    # first, they give open_clip's ids.
    repaired = ["it\u2019s a dog\u2019s life", "caf\u00c3\u00a9 au lait", "\ufb01sh", "\uff23\uff2c\uff29\uff30"]
    for text in repaired:
        assert clean_lower(text) != open_clip_tokenizer.get_clean_fn("lower")(text)
        assert clean_lower(ftfy.fix_text(text)) == open_clip_tokenizer.get_clean_fn("lower")(text)


def test_the_word_cache_does_not_change_the_ids(clip: ClipTokenizer) -> None:
    expected = clip.encode(CORPUS)
    assert torch.equal(clip.encode(CORPUS[::-1]), expected.flip(0))  # warm, in another order
    for cache_size in (0, 4):  # none; evicting all the time
        other = ClipTokenizer.from_bpe_file(open_clip_tokenizer.default_bpe(), cache_size=cache_size)
        assert torch.equal(other.encode(CORPUS), expected) and torch.equal(other.encode(CORPUS), expected)
    assert clip._word_ids.cache_info().hits > 0


def test_hf_files_equal_transformers_clip_tokenizer(hf_folder: Path, clip: ClipTokenizer) -> None:
    """Through the end token: transformers pads with <|endoftext|>, we (as open_clip) with zeros. It
    does not unescape HTML entities: it is given the texts unescaped (open_clip's first step)."""
    ours = ClipTokenizer.from_hf_files(hf_folder / HF_VOCAB, hf_folder / HF_MERGES)
    assert ours.files == (HF_VOCAB, HF_MERGES) and ours.eot_token_id == EOT
    reference = transformers.CLIPTokenizer(str(hf_folder / HF_VOCAB), str(hf_folder / HF_MERGES))
    ids = ours.encode(CORPUS)
    expected = hf_ids(reference, [html.unescape(html.unescape(t)) for t in CORPUS], 77)
    for row, text in enumerate(CORPUS):
        end = int(ids[row].nonzero().max()) + 1  # through the (last) end token
        assert ids[row, end - 1] == EOT
        assert ids[row, :end].tolist() == expected[row, :end].tolist(), text
        assert not ids[row, end:].any()
    # the .gz's vocabulary: the ids differ only where a text names a special token (each its own names)
    same = [row for row, text in enumerate(CORPUS) if "end_of_text" not in text and "endoftext" not in text]
    assert len(same) == len(CORPUS) - 2 and torch.equal(clip.encode(CORPUS)[same], ids[same])


def test_where_transformers_differs_from_open_clip(hf_folder: Path, clip: ClipTokenizer, reference: Any) -> None:
    """Text on which transformers' CLIPTokenizer and open_clip disagree; ours is open_clip's."""
    hf = transformers.CLIPTokenizer(str(hf_folder / HF_VOCAB), str(hf_folder / HF_MERGES))
    texts = [
        "ΟΔΟΣ",  # str.lower ends it with a final sigma (U+03C2), the Rust normaliser with U+03C3
        "Tom &amp; Jerry",  # transformers does not unescape
    ]
    ours = clip.encode(texts)
    assert torch.equal(ours, reference(texts))
    theirs = hf_ids(hf, texts, 77)
    for row in range(len(texts)):
        end = ours[row].tolist().index(EOT) + 1
        assert ours[row, :end].tolist() != theirs[row, :end].tolist(), texts[row]


def test_clip_files_that_are_not_clips(tmp_path: Path) -> None:
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(TokenizerError, match="gzipped BPE"):
        ClipTokenizer.from_bpe_file(tmp_path / "bad.gz")
    (tmp_path / "short.gz").write_bytes(gzip.compress(b"#version\na b\nc d\n"))
    with pytest.raises(TokenizerError, match="not CLIP's 48894"):
        ClipTokenizer.from_bpe_file(tmp_path / "short.gz")
    (tmp_path / HF_VOCAB).write_text(json.dumps({"a": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}))
    (tmp_path / HF_MERGES).write_text("#version: 0.2\na b\n")
    with pytest.raises(TokenizerError, match="lacks"):
        ClipTokenizer.from_hf_files(tmp_path / HF_VOCAB, tmp_path / HF_MERGES)
    (tmp_path / HF_MERGES).write_text("#version: 0.2\na b c\n")
    with pytest.raises(TokenizerError, match="is not a merge"):
        ClipTokenizer.from_hf_files(tmp_path / HF_VOCAB, tmp_path / HF_MERGES)
    with pytest.raises(TokenizerError, match="at least 2"):
        ClipTokenizer.from_bpe_file(open_clip_tokenizer.default_bpe(), context_length=1)


# JsonTokenizer

WORDS = sorted({w for t in CORPUS[:20] for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(t.lower())})


def word_level(padding: dict[str, Any] | None, truncation_left: bool = False) -> Tokenizer:
    """Words of part of the corpus (the rest <unk>), lower-cased, </s> appended."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer.add_special_tokens(["<pad>", "</s>", "<unk>"])
    if padding is not None:
        tokenizer.enable_padding(**padding)
    if truncation_left:
        tokenizer.enable_truncation(max_length=512, direction="left")
    return tokenizer


def unigram() -> Tokenizer:
    """SigLIP's shape (T5's SentencePiece, converted): Metaspace, a Unigram model, </s> appended, no padding."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    pieces += [("\u2581" + w, -3.0) for w in ("a", "photo", "of", "cat", "dog", "the", "and", "hello", "world")]
    pieces += [("ing", -4.0), ("er", -4.0), ("ed", -4.0)]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer.add_special_tokens(["<pad>", "</s>", "<unk>"])
    return tokenizer


CASES = {  # name -> (the file's tokenizer, our pad_id, transformers' pad_token): the file's padding, or ours
    "wordlevel": (lambda: word_level({"pad_id": 0, "pad_token": "<pad>"}), None, None),
    "wordlevel-left": (lambda: word_level({"pad_id": 0, "pad_token": "<pad>", "direction": "left"}, truncation_left=True), None, None),
    "wordlevel-unpadded": (lambda: word_level(None), 0, "<pad>"),
    "unigram": (unigram, 1, "</s>"),  # open_clip's SigLIP pads with </s> (id 1)
}


@pytest.mark.parametrize("canonicalize", [False, True])
@pytest.mark.parametrize("context_length", [64, 8])
@pytest.mark.parametrize("case", list(CASES))
def test_json_equals_pretrained_tokenizer_fast(tmp_path: Path, case: str, context_length: int, canonicalize: bool) -> None:
    build, pad_id, pad_token = CASES[case]
    path = tmp_path / TOKENIZER_JSON
    build().save(str(path))
    ours = JsonTokenizer(path, context_length, pad_id=pad_id, canonicalize=canonicalize)
    kwargs = {"pad_token": pad_token} if pad_token else {}
    reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path), **kwargs)
    texts = [open_clip_tokenizer.get_clean_fn("canonicalize")(t) for t in CORPUS] if canonicalize else CORPUS
    ids = ours.encode(CORPUS)
    assert ids.dtype == torch.int64 and ids.shape == (len(CORPUS), context_length)
    assert torch.equal(ids, hf_ids(reference, texts, context_length))
    assert (ids == 1).sum(dim=1).ge(1).all() and ours.files == (TOKENIZER_JSON,)  # every row has </s>, truncated or not
    assert ours.pad_id == reference.pad_token_id
    assert ours.encode([]).shape == (0, context_length)


def test_canonicalize_strips_punctuation(tmp_path: Path) -> None:
    path = tmp_path / TOKENIZER_JSON
    word_level({"pad_id": 0, "pad_token": "<pad>"}).save(str(path))
    plain, canonical = JsonTokenizer(path, 8), JsonTokenizer(path, 8, canonicalize=True)
    assert not torch.equal(plain.encode(["Hello, World!"]), canonical.encode(["Hello, World!"]))
    assert torch.equal(canonical.encode(["Hello, World!"]), plain.encode(["hello world"]))
    assert torch.equal(canonical.encode(["snake_case"]), plain.encode(["snake case"]))


def test_the_files_padding_comes_before_pad_id(tmp_path: Path) -> None:
    path = tmp_path / TOKENIZER_JSON
    word_level({"pad_id": 0, "pad_token": "<pad>"}).save(str(path))
    ours = JsonTokenizer(path, 8, pad_id=1)
    assert ours.pad_id == 0 and ours.encode(["a"]).tolist() == [[WORDS.index("a") + 3, 1, 0, 0, 0, 0, 0, 0]]


def test_json_files_and_settings_it_refuses(tmp_path: Path) -> None:
    path = tmp_path / TOKENIZER_JSON
    path.write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot read"):
        JsonTokenizer(path, 16, pad_id=0)
    word_level(None).save(str(path))
    with pytest.raises(TokenizerError, match="no padding configuration: pass the pad token's id"):
        JsonTokenizer(path, 16)
    with pytest.raises(TokenizerError, match="is not an id"):
        JsonTokenizer(path, 16, pad_id=10**6)
    with pytest.raises(TokenizerError, match="no room"):
        JsonTokenizer(path, 1, pad_id=0)  # </s> alone fills it
    with pytest.raises(TypeError):
        JsonTokenizer(path, 16, pad_id=0).encode("a photo")


# load_tokenizer


def test_load_tokenizer_picks_by_kind_and_files(tmp_path: Path, hf_folder: Path, clip: ClipTokenizer) -> None:
    folder = tmp_path / "model"
    shutil.copytree(hf_folder, folder)
    word_level({"pad_id": 0, "pad_token": "<pad>"}).save(str(folder / TOKENIZER_JSON))
    assert set(TOKENIZER_FILES) == {p.name for p in folder.iterdir()}
    json_tokenizer = load_tokenizer(folder, "json", 16, canonicalize=True)
    assert isinstance(json_tokenizer, JsonTokenizer) and json_tokenizer.canonicalize and json_tokenizer.files == (TOKENIZER_JSON,)
    hf = load_tokenizer(folder, "clip", 77, canonicalize=False)  # vocab.json + merges.txt before the .gz
    assert isinstance(hf, ClipTokenizer) and hf.files == (HF_VOCAB, HF_MERGES)
    (folder / HF_MERGES).unlink()
    gz = load_tokenizer(folder, "clip", 77)
    assert isinstance(gz, ClipTokenizer) and gz.files == (OPENCLIP_BPE,)
    assert torch.equal(gz.encode(CORPUS[:5]), clip.encode(CORPUS[:5])) and gz.context_length == 77


@pytest.mark.parametrize(
    ("files", "kind", "message"),
    [
        ((), "clip", "looked for vocab.json \\+ merges.txt, or bpe_simple_vocab_16e6.txt.gz; it holds no files"),
        ((), "json", "looked for tokenizer.json; it holds no files"),
        ((HF_VOCAB, "config.json"), "clip", "it holds config.json, vocab.json; vocab.json and merges.txt are read together"),
        ((TOKENIZER_JSON,), "clip", "it holds tokenizer.json; it has tokenizer.json, which the json kind reads"),
        ((HF_VOCAB, HF_MERGES), "json", "which the clip kind reads"),
        (("spiece.model", "tokenizer_config.json"), "json", "is not read: give TOKENIZER= a folder with its fast"),
    ],
)
def test_load_tokenizer_says_what_is_missing(tmp_path: Path, files: tuple[str, ...], kind: str, message: str) -> None:
    for name in files:
        (tmp_path / name).write_text("{}")
    with pytest.raises(TokenizerError, match=message) as error:
        load_tokenizer(tmp_path, kind, 77)
    assert isinstance(error.value, ValueError) and str(tmp_path) in str(error.value)


def test_load_tokenizer_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(tmp_path / "missing", "clip", 77)
    with pytest.raises(TokenizerError, match="not one of \\['clip', 'json'\\]"):
        load_tokenizer(tmp_path, "sentencepiece", 77)
    with pytest.raises(TokenizerError, match="canonicalize is SigLIP's"):
        load_tokenizer(tmp_path, "clip", 77, canonicalize=True)
