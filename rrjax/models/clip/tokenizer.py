"""CLIP's text tokenizer, for zero-shot prompts, on the `tokenizers` library.

The ids are OpenAI CLIP's and open_clip's (`SimpleTokenizer`, `open_clip.tokenize`):
[<|startoftext|>] + byte-level BPE tokens (end-of-word suffix "</w>") + [<|endoftext|>],
cut to `context_length` with the last kept token forced to <|endoftext|>, then padded
with 0. rrjax reimplements this instead of calling transformers' CLIPTokenizer so that
zero-shot needs neither transformers' model classes nor torch; the BPE itself runs in
`tokenizers`, built as transformers' CLIPConverter builds it.

Text is cleaned as open_clip's "lower" clean does (basic_clean + whitespace_clean +
lower()): HTML entities unescaped (twice), Unicode NFC, curly quotes straightened,
whitespace collapsed and stripped, lower-cased. ftfy is not a dependency of rrjax, so
of its `fix_text` only those two steps are done (NFC and uncurl_quotes, which change the
ids of ordinary text such as "king’s" or a decomposed "café"); its repair of mojibake,
ligatures, full-width characters and control characters is skipped, which changes
nothing for ordinary prompts. A literal "<|startoftext|>"/"<|endoftext|>" in a prompt is
that special token, as in OpenAI CLIP and transformers (open_clip 3.3 renamed its special
tokens, so it BPE-encodes these strings).
"""

from __future__ import annotations

import functools
import gzip
import html
import json
import os
import re
import unicodedata

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

SOT = "<|startoftext|>"
EOT = "<|endoftext|>"
_END_OF_WORD = "</w>"
# OpenAI CLIP's pre-tokenisation (simple_tokenizer.py); matches are kept, whitespace dropped.
_PATTERN = (r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"
            r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+")
_STANDARD_VOCAB = os.path.join(os.path.dirname(__file__), "bpe_simple_vocab_16e6.txt.gz")
_STANDARD_MERGES = 49152 - 256 - 2  # OpenAI's 49152 BPE entries less bytes and specials.
# ftfy.fixes.uncurl_quotes, which open_clip's basic_clean applies through ftfy.fix_text.
_SINGLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTES = re.compile("[\u201c-\u201f]")


class CLIPTokenizer:
  """Prompts -> int32 token ids [N, context_length], open_clip's semantics.

  `backend` is a `tokenizers.Tokenizer` that byte-level-BPE encodes cleaned text without
  adding special tokens; its vocabulary must hold <|startoftext|> and <|endoftext|>.
  """

  def __init__(self, backend: Tokenizer, context_length: int, source: str):
    if context_length < 1:
      raise ValueError(f"context_length must be positive, got {context_length}.")
    ids = [backend.token_to_id(token) for token in (SOT, EOT)]
    if None in ids:
      raise ValueError(f"the CLIP vocabulary of {source} lacks {SOT} or {EOT}.")
    self.context_length = context_length
    self.sot_id, self.eot_id = ids
    self.source = source
    self._backend = backend

  def __call__(self, texts: list[str]) -> np.ndarray:
    if isinstance(texts, str):  # As open_clip: one prompt, not a list of characters.
      texts = [texts]
    # add_special_tokens=False: Hugging Face tokenizer.json post-processors add
    # <|startoftext|>/<|endoftext|> themselves; here they are added once, below.
    encodings = self._backend.encode_batch([clean(text) for text in texts],
                                           add_special_tokens=False)
    ids = np.zeros((len(encodings), self.context_length), np.int32)
    for row, encoding in zip(ids, encodings):
      tokens = [self.sot_id, *encoding.ids, self.eot_id][:self.context_length]
      tokens[-1] = self.eot_id  # A no-op unless truncated (open_clip's rule).
      row[:len(tokens)] = tokens
    return ids

  def __repr__(self) -> str:
    return f"CLIPTokenizer({self.source}, context_length={self.context_length})"


def clean(text: str) -> str:
  """open_clip's "lower" clean, without ftfy beyond NFC and straight quotes (see module)."""
  text = unicodedata.normalize("NFC", html.unescape(html.unescape(text)))
  text = _SINGLE_QUOTES.sub("'", _DOUBLE_QUOTES.sub('"', text))  # After "&rsquo;" is "’".
  return " ".join(text.split()).lower()


def bytes_to_unicode() -> dict[int, str]:
  """OpenAI's reversible byte -> printable character map; its order fixes the first 256 ids."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  codes = printable + [256 + n for n in range(len(others))]
  return {b: chr(c) for b, c in zip(printable + others, codes)}


def build_backend(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
  """The byte-level BPE of CLIP (transformers' CLIPConverter recipe, no normaliser:
  `clean` runs first, and no post-processor: CLIPTokenizer adds the special tokens)."""
  backend = Tokenizer(models.BPE(
      vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
      end_of_word_suffix=_END_OF_WORD, fuse_unk=False, unk_token=EOT))
  backend.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(Regex(_PATTERN), behavior="removed", invert=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
  ])
  backend.decoder = decoders.ByteLevel()
  # A literal "<|endoftext|>" in a prompt is that token (module docstring).
  backend.add_special_tokens([token for token in (SOT, EOT) if token in vocab])
  return backend


@functools.cache
def _standard_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
  """OpenAI's vocabulary and merges, built exactly as its simple_tokenizer.py does (49408
  ids: bytes, bytes + "</w>", one per merge, <|startoftext|>, <|endoftext|>)."""
  with gzip.open(_STANDARD_VOCAB, "rt", encoding="utf-8") as f:
    lines = f.read().split("\n")
  merges = [tuple(line.split()) for line in lines[1:_STANDARD_MERGES + 1]]
  symbols = list(bytes_to_unicode().values())
  tokens = [*symbols, *(s + _END_OF_WORD for s in symbols), *("".join(m) for m in merges),
            SOT, EOT]
  return {token: i for i, token in enumerate(tokens)}, merges


@functools.cache
def _standard_backend() -> Tokenizer:
  return build_backend(*_standard_vocab())


def standard(context_length: int = 77) -> CLIPTokenizer:
  """OpenAI CLIP's tokenizer (its BPE vocabulary ships with rrjax, see VOCAB_SOURCE.md)."""
  return CLIPTokenizer(_standard_backend(), context_length, "OpenAI CLIP's vocabulary")


def _read_merges(path: str) -> list[tuple[str, str]]:
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  if lines and lines[0].startswith("#version"):
    lines = lines[1:]
  return [tuple(line.split()) for line in lines if line.strip()]


def _backend_from_files(path: str) -> Tokenizer | None:
  """The tokenizer of a Hugging Face CLIP directory: tokenizer.json, else vocab.json +
  merges.txt; None when it has neither."""
  tokenizer_json = os.path.join(path, "tokenizer.json")
  if os.path.isfile(tokenizer_json):
    backend = Tokenizer.from_file(tokenizer_json)
    backend.no_padding()  # CLIPTokenizer pads and truncates, as open_clip does.
    backend.no_truncation()
    return backend
  files = [os.path.join(path, name) for name in ("vocab.json", "merges.txt")]
  present = [os.path.isfile(file) for file in files]
  if not any(present):
    return None
  if not all(present):
    have, lack = ("vocab.json", "merges.txt") if present[0] else ("merges.txt", "vocab.json")
    raise FileNotFoundError(f"{path} has {have} but no {lack} (and no tokenizer.json).")
  with open(files[0], encoding="utf-8") as f:
    vocab = json.load(f)
  return build_backend(vocab, _read_merges(files[1]))


def from_checkpoint_dir(path: str, context_length: int) -> CLIPTokenizer:
  """The tokenizer of a Hugging Face CLIP checkpoint directory, with open_clip's semantics
  whatever its own padding and truncation settings; OpenAI's vocabulary (`standard`) when
  the directory holds no tokenizer files. ValueError when its vocabulary lacks
  <|startoftext|> or <|endoftext|>."""
  if not os.path.isdir(path):
    raise FileNotFoundError(f"no checkpoint directory {path!r}.")
  backend = _backend_from_files(path)
  if backend is None:
    return standard(context_length)
  return CLIPTokenizer(backend, context_length, f"checkpoint directory {path!r}")


def write_hf_files(path: str, context_length: int = 77) -> None:
  """Writes OpenAI's vocabulary into directory `path` as Hugging Face CLIP checkpoints hold
  it (vocab.json, merges.txt, tokenizer.json, tokenizer_config.json), without transformers,
  so that HF-layout checkpoints rrjax writes (e.g. test fixtures) load in both libraries.
  tokenizer.json is transformers' CLIPTokenizer pipeline: its normaliser, and a
  post-processor adding <|startoftext|> and <|endoftext|>."""
  vocab, merges = _standard_vocab()
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "vocab.json"), "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(os.path.join(path, "merges.txt"), "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
  backend = build_backend(vocab, merges)
  backend.normalizer = normalizers.Sequence(
      [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
  backend.post_processor = processors.RobertaProcessing(
      (EOT, vocab[EOT]), (SOT, vocab[SOT]), trim_offsets=False, add_prefix_space=False)
  backend.save(os.path.join(path, "tokenizer.json"))
  config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": context_length,
            "bos_token": SOT, "eos_token": EOT, "pad_token": EOT, "unk_token": EOT}
  with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
