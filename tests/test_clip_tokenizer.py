"""rrjax's CLIP tokenizer against open_clip and transformers, its independent references.

No JAX compiles; open_clip (through tests/support/open_clip_ref.py) and transformers are
imported once per module.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import Tokenizer

from rrjax.models.clip import tokenizer as clip_tokenizer
from support.open_clip_ref import import_open_clip

# "a photo of a {c}." with awkward class names, plus prompts that exercise cleaning.
PROMPTS = [
    "a photo of a dog.",
    "a photo of a St. Bernard's dog.",
    "a photo of a jack-o'-lantern.",
    "a photo of a 7-Eleven store.",
    "a photo of a café au lait.",
    "a photo of a cafe\u0301 au lait.",  # Decomposed accent: NFC makes it "café".
    "  A   PHOTO of\ta\n\nCROQUET ball!!  ",
    "a photo of the king’s “crown”.",  # Curly quotes, straightened as ftfy does.
    "a photo of a 1,234.5 kg weight (heavy); wow?!",
    "a photo of Ross &amp; Co.'s sign.",
    "a photo of the queen&rsquo;s &lt;corgi&gt;.",
    "i'm sure you're right, we've seen they'll say he'd go",
    "",
]
LONG_PROMPT = "a photo of a " + "very " * 100 + "long dog."  # > 77 tokens.
# transformers neither straightens quotes (ftfy) nor unescapes HTML, as open_clip does.
HF_PROMPTS = [p for p in PROMPTS if "’" not in p and "&" not in p] + [LONG_PROMPT]


@pytest.fixture(scope="module")
def open_clip():
  return import_open_clip()


@pytest.fixture(scope="module")
def openai_files(open_clip):
  """OpenAI's vocabulary and merges as open_clip builds them, special tokens named as in
  OpenAI CLIP and Hugging Face checkpoints (open_clip renames them <start_of_text>...)."""
  reference = open_clip.tokenizer.SimpleTokenizer()
  vocab = dict(reference.encoder)
  vocab[clip_tokenizer.SOT] = vocab.pop("<start_of_text>")
  vocab[clip_tokenizer.EOT] = vocab.pop("<end_of_text>")
  merges = sorted(reference.bpe_ranks, key=reference.bpe_ranks.get)
  return vocab, merges


def _write_vocab(directory, vocab: dict, merges: list) -> None:
  with open(directory / "vocab.json", "w", encoding="utf-8") as f:
    json.dump(vocab, f, ensure_ascii=False)
  with open(directory / "merges.txt", "w", encoding="utf-8") as f:
    f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


@pytest.fixture(scope="module")
def hf_dir(openai_files, tmp_path_factory):
  """A Hugging Face CLIP tokenizer directory (tokenizer.json) saved by transformers 5."""
  import transformers
  source = tmp_path_factory.mktemp("clip_vocab")
  _write_vocab(source, *openai_files)
  # transformers 5 ignores vocab_file=/merges_file= here (it builds a 3-token vocabulary);
  # vocab=/merges= take the paths.
  reference = transformers.CLIPTokenizer(vocab=str(source / "vocab.json"),
                                         merges=str(source / "merges.txt"))
  assert len(reference) == 49408
  saved = tmp_path_factory.mktemp("clip_hf")
  reference.save_pretrained(saved)
  return saved, reference


def _assert_matches_transformers(ids, reference, texts, context_length: int) -> None:
  expected = reference(texts, padding="max_length", max_length=context_length, truncation=True)
  # transformers pads with <|endoftext|>, open_clip (and rrjax) with 0.
  mask = np.array(expected["attention_mask"], bool)
  np.testing.assert_array_equal(ids, np.where(mask, expected["input_ids"], 0))


def test_standard_vocabulary():
  tokenizer = clip_tokenizer.standard()
  assert (tokenizer.sot_id, tokenizer.eot_id) == (49406, 49407)
  assert tokenizer._backend.get_vocab_size() == 49408
  assert clip_tokenizer.standard(16)._backend is tokenizer._backend  # Built once.


def test_standard_matches_open_clip(open_clip):
  texts = PROMPTS + [LONG_PROMPT]
  ids = clip_tokenizer.standard()(texts)
  assert ids.dtype == np.int32 and ids.shape == (len(texts), 77)
  np.testing.assert_array_equal(ids, open_clip.get_tokenizer("ViT-B-32")(texts).numpy())
  np.testing.assert_array_equal(ids, open_clip.tokenize(texts).numpy())
  assert ids[-1, -1] == 49407  # Truncated: the last kept token is <|endoftext|>.


def test_literal_special_tokens():
  """As in OpenAI CLIP (open_clip 3.3 renamed its special tokens and BPE-encodes these)."""
  np.testing.assert_array_equal(clip_tokenizer.standard(8)(["a <|endoftext|> b"]),
                                [[49406, 320, 49407, 321, 49407, 0, 0, 0]])


def test_context_length_matches_open_clip(open_clip):
  texts = [PROMPTS[1], PROMPTS[8], LONG_PROMPT]
  np.testing.assert_array_equal(clip_tokenizer.standard(16)(texts),
                                open_clip.tokenize(texts, context_length=16).numpy())


def test_tokenizer_json_matches_transformers(hf_dir):
  saved, reference = hf_dir
  with open(saved / "tokenizer.json", encoding="utf-8") as f:
    # The saved pipeline adds <|startoftext|>/<|endoftext|> itself; they must not double.
    assert json.load(f)["post_processor"]["type"] == "RobertaProcessing"
  ids = clip_tokenizer.from_checkpoint_dir(str(saved), 77)(HF_PROMPTS)
  _assert_matches_transformers(ids, reference, HF_PROMPTS, 77)
  np.testing.assert_array_equal(ids, clip_tokenizer.standard()(HF_PROMPTS))


def test_tokenizer_json_padding_and_truncation_ignored(hf_dir, tmp_path):
  backend = Tokenizer.from_file(str(hf_dir[0] / "tokenizer.json"))
  backend.enable_truncation(max_length=4)
  backend.enable_padding(length=30, pad_id=49407)
  backend.save(str(tmp_path / "tokenizer.json"))
  texts = PROMPTS[:4] + [LONG_PROMPT]
  np.testing.assert_array_equal(clip_tokenizer.from_checkpoint_dir(str(tmp_path), 77)(texts),
                                clip_tokenizer.standard()(texts))


def test_vocab_and_merges_files(openai_files, tmp_path):
  _write_vocab(tmp_path, *openai_files)
  tokenizer = clip_tokenizer.from_checkpoint_dir(str(tmp_path), 77)
  assert "checkpoint directory" in tokenizer.source
  texts = PROMPTS + [LONG_PROMPT]
  np.testing.assert_array_equal(tokenizer(texts), clip_tokenizer.standard()(texts))


def test_write_hf_files(tmp_path):
  """rrjax's own HF-layout tokenizer files load in transformers and here alike."""
  import transformers
  clip_tokenizer.write_hf_files(str(tmp_path), 32)
  reference = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
  assert reference.model_max_length == 32 and len(reference) == 49408
  ids = clip_tokenizer.from_checkpoint_dir(str(tmp_path), 32)(HF_PROMPTS)
  _assert_matches_transformers(ids, reference, HF_PROMPTS, 32)
  np.testing.assert_array_equal(ids, clip_tokenizer.standard(32)(HF_PROMPTS))


def test_empty_directory_falls_back_to_standard(tmp_path):
  tokenizer = clip_tokenizer.from_checkpoint_dir(str(tmp_path), 32)
  assert tokenizer._backend is clip_tokenizer.standard()._backend
  assert tokenizer.context_length == 32
  np.testing.assert_array_equal(tokenizer(PROMPTS), clip_tokenizer.standard(32)(PROMPTS))


def _byte_vocab(open_clip, special_tokens: bool) -> dict:
  """Every byte's character as a token at id b, with "</w>" at 256 + b; no merges."""
  characters = open_clip.tokenizer.bytes_to_unicode()
  vocab = {characters[b]: b for b in range(256)}
  vocab.update({characters[b] + "</w>": 256 + b for b in range(256)})
  if special_tokens:
    vocab.update({clip_tokenizer.SOT: 512, clip_tokenizer.EOT: 513})
  return vocab


def test_byte_level_vocabulary(open_clip, tmp_path):
  _write_vocab(tmp_path, _byte_vocab(open_clip, special_tokens=True), [])
  ids = clip_tokenizer.from_checkpoint_dir(str(tmp_path), 8)(["a cat", "A  CAT!"])
  a, c, t, bang = (ord(x) for x in "act!")
  np.testing.assert_array_equal(ids, [
      [512, 256 + a, c, a, 256 + t, 513, 0, 0],
      [512, 256 + a, c, a, 256 + t, 256 + bang, 513, 0],
  ])


def test_vocabulary_without_special_tokens(open_clip, tmp_path):
  _write_vocab(tmp_path, _byte_vocab(open_clip, special_tokens=False), [])
  with pytest.raises(ValueError, match=str(tmp_path)):
    clip_tokenizer.from_checkpoint_dir(str(tmp_path), 77)


def test_missing_files(tmp_path):
  (tmp_path / "vocab.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="merges.txt"):
    clip_tokenizer.from_checkpoint_dir(str(tmp_path), 77)
  with pytest.raises(FileNotFoundError):
    clip_tokenizer.from_checkpoint_dir(str(tmp_path / "absent"), 77)
