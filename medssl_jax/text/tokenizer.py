"""WordPiece tokenizers for report text, on the Hugging Face `tokenizers` library: trained locally on a report
corpus (no downloads), saved in that library's standard tokenizer.json, and any BERT `vocab.txt` (e.g. a clinical
BERT's) loadable instead.

A trained tokenizer lowercases and splits text into words (letter runs, numbers with their decimal part, single
punctuation marks: `pre_tokenize`). Its vocabulary is learnt by the usual WordPiece recipe (as in the library's
WordPieceTrainer), here in plain Python so that it is deterministic (the library's trainer orders tokens of equal
count differently from run to run): start from the characters of the words (inside a word with the continuation
prefix "##"), then repeatedly merge the most frequent adjacent pair of symbols until `vocab_size` is reached or no
pair occurs `min_frequency` times, ties broken by the merged token string. A BERT vocab.txt gets BERT's own
normalisation and pre-tokenisation. Encoding is WordPiece's greedy longest-match-first split of each word (the
library's), a word that cannot be split becoming [UNK].
"""
from __future__ import annotations

import collections
import heapq
import json
import re
from typing import Iterable, Sequence

from etils import epath
import numpy as np
import tokenizers
from tokenizers import models, normalizers, pre_tokenizers

PAD, UNK, CLS, SEP, MASK = '[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)  # A trained vocabulary starts with them: [PAD] = 0.
CONTINUATION = '##'
_LEGACY_FORMAT = 'medssl_jax.wordpiece'  # medssl_jax's own JSON vocabulary format, read by `load`.
# Words: runs of letters; numbers (digits with an optional decimal part, kept whole); any other
# non-space character on its own (punctuation).
_WORD_PATTERN = r'\d+(?:\.\d+)?|[^\W\d_]+|[^\w\s]|_'
_WORD = re.compile(_WORD_PATTERN)
# No space before closing punctuation and after opening brackets when decoding.
_NO_SPACE_BEFORE = re.compile(r' ([.,;:!?%)\]])')
_NO_SPACE_AFTER = re.compile(r'([(\[]) ')


_SENTENCE_END = re.compile(r'(?<=[.!?])\s+|\n+')


def split_sentences(text: str) -> list[str]:
  """The sentences of a report: split after . ! ? followed by whitespace, and at line breaks; empty pieces
  dropped; a text without any sentence gives [text] (ConVIRT's text view samples one of them)."""
  parts = [p.strip() for p in _SENTENCE_END.split(text)]
  return [p for p in parts if p] or [text]


def pre_tokenize(text: str, *, lowercase: bool = True) -> list[str]:
  """Splits `text` into words: letter runs, numbers ("12", "2.5") and single punctuation marks."""
  if lowercase:
    text = text.lower()
  return _WORD.findall(text)


def _report_pipeline(hf: tokenizers.Tokenizer, *, lowercase: bool) -> tokenizers.Tokenizer:
  """This project's normalisation and pre-tokenisation (`pre_tokenize`) on a library tokenizer."""
  hf.normalizer = normalizers.Lowercase() if lowercase else None
  hf.pre_tokenizer = pre_tokenizers.Split(tokenizers.Regex(_WORD_PATTERN), behavior='removed', invert=True)
  return hf


def _wordpiece(vocab: dict, max_chars_per_word: int = 100) -> models.WordPiece:
  return models.WordPiece(vocab, unk_token=UNK, continuing_subword_prefix=CONTINUATION,
                          max_input_chars_per_word=max_chars_per_word)


class Tokenizer:
  """A WordPiece tokenizer (a `tokenizers.Tokenizer` inside) with encode / decode / save / load.

  Build one with `train_tokenizer`, `Tokenizer.load(path)` (a tokenizer.json, a BERT vocab.txt, or a
  medssl_jax.wordpiece JSON vocabulary), or `Tokenizer(vocab)` from a token list in id order (with this project's
  pre-tokenisation).
  """

  def __init__(self, vocab: Sequence[str] | None = None, *, lowercase: bool = True, max_chars_per_word: int = 100,
               hf: tokenizers.Tokenizer | None = None, source: str = 'vocab'):
    if hf is None:
      vocab = tuple(vocab)
      if len(set(vocab)) != len(vocab):
        dup = sorted({t for t in vocab if vocab.count(t) > 1})
        raise ValueError(f'vocab has duplicate tokens: {dup[:10]}.')
      hf = _report_pipeline(tokenizers.Tokenizer(_wordpiece({t: i for i, t in enumerate(vocab)}, max_chars_per_word)),
                            lowercase=lowercase)
    self.hf = hf
    self.token_to_id = hf.get_vocab(with_added_tokens=True)
    self.vocab = tuple(sorted(self.token_to_id, key=self.token_to_id.get))
    if [self.token_to_id[t] for t in self.vocab] != list(range(len(self.vocab))):
      raise ValueError(f'{source}: token ids must be 0..{len(self.vocab) - 1} without gaps.')
    missing = [t for t in SPECIAL_TOKENS if t not in self.token_to_id]
    if missing:
      raise ValueError(f'{source}: the vocabulary lacks the special token(s) {missing}; a WordPiece vocabulary for '
                       f'reports needs {list(SPECIAL_TOKENS)}.')
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (self.token_to_id[t] for t in SPECIAL_TOKENS)

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  def __eq__(self, other) -> bool:
    return isinstance(other, Tokenizer) and self.hf.to_str() == other.hf.to_str()

  def __repr__(self) -> str:
    return f'Tokenizer(vocab_size={self.vocab_size})'

  def tokenize(self, text: str) -> list[str]:
    """The WordPiece tokens of `text`, without [CLS] / [SEP]."""
    return self.hf.encode(text, add_special_tokens=False).tokens

  def encode(self, text: str, *, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [max_length], mask bool [max_length]) of "[CLS] tokens [SEP]" padded with [PAD].

    Tokens beyond max_length - 2 are dropped ([SEP] is always kept). `mask` is True on real tokens
    ([CLS] and [SEP] included) and False on padding.
    """
    if max_length < 2:
      raise ValueError(f'max_length must be >= 2 to hold [CLS] and [SEP], got {max_length}.')
    body = self.hf.encode(text, add_special_tokens=False).ids[:max_length - 2]
    seq = [self.cls_id, *body, self.sep_id]
    ids = np.full((max_length,), self.pad_id, np.int32)
    ids[:len(seq)] = seq
    mask = np.zeros((max_length,), bool)
    mask[:len(seq)] = True
    return ids, mask

  def encode_batch(self, texts: Iterable[str], *, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """encode() of each text, stacked: (ids int32 [N, max_length], mask bool [N, max_length])."""
    pairs = [self.encode(t, max_length=max_length) for t in texts]
    if not pairs:
      return np.zeros((0, max_length), np.int32), np.zeros((0, max_length), bool)
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])

  def decode(self, ids, *, skip_special_tokens: bool = True) -> str:
    """Text of `ids`: "##" pieces glued to the previous piece, no space before closing punctuation."""
    words: list[str] = []
    for i in np.asarray(ids).reshape(-1).tolist():
      if not 0 <= i < self.vocab_size:
        raise ValueError(f'token id {i} is out of range for a vocabulary of {self.vocab_size}.')
      tok = self.vocab[i]
      if skip_special_tokens and tok in SPECIAL_TOKENS:
        continue
      if tok.startswith(CONTINUATION) and words:
        words[-1] += tok[len(CONTINUATION):]
      else:
        words.append(tok)
    text = ' '.join(words)
    return _NO_SPACE_AFTER.sub(r'\1', _NO_SPACE_BEFORE.sub(r'\1', text))

  def to_json(self) -> str:
    """The tokenizer as a `tokenizers` tokenizer.json text (readable by `tokenizers.Tokenizer.from_file`)."""
    return self.hf.to_str(pretty=True)

  def save(self, path) -> None:
    """Writes to_json() to `path` (local or a URL such as gs://...)."""
    epath.Path(path).write_text(self.to_json())

  @classmethod
  def load(cls, path) -> 'Tokenizer':
    """A tokenizer.json of the `tokenizers` library, a BERT vocab.txt (one token per line, with BERT's lowercasing
    and pre-tokenisation), or a medssl_jax.wordpiece JSON vocabulary."""
    path = epath.Path(path)
    text = path.read_text()
    if path.suffix == '.txt':
      vocab = {t: i for i, t in enumerate(line.rstrip('\n') for line in text.splitlines())}
      hf = tokenizers.Tokenizer(_wordpiece(vocab))
      hf.normalizer = normalizers.BertNormalizer(lowercase=True)
      hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
      return cls(hf=hf, source=str(path))
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path} is neither a tokenizer.json nor a vocab.txt: {e}') from None
    if isinstance(data, dict) and data.get('format') == _LEGACY_FORMAT:
      return cls(data['vocab'], lowercase=data['lowercase'], max_chars_per_word=data['max_chars_per_word'])
    if not isinstance(data, dict) or not isinstance(data.get('model'), dict):
      raise ValueError(f'{path} is not a tokenizer file: expected a `tokenizers` tokenizer.json (with "model"), a '
                       'BERT vocab.txt, or a medssl_jax.wordpiece vocabulary')
    return cls(hf=tokenizers.Tokenizer.from_str(text), source=str(path))


def _merge(a: str, b: str) -> str:
  return a + b[len(CONTINUATION):] if b.startswith(CONTINUATION) else a + b


def train_tokenizer(texts: Iterable[str], *, vocab_size: int, min_frequency: int = 2,
                    lowercase: bool = True) -> Tokenizer:
  """Trains a WordPiece vocabulary of at most `vocab_size` tokens on `texts`.

  The vocabulary is the special tokens, then every character seen (as a word start "c" and inside a
  word "##c", sorted), then merged pairs in the order they were learned. A pair is merged only if it
  occurs at least `min_frequency` times (counting word frequencies); among the most frequent pairs the
  one whose merged token string sorts first wins.
  """
  words = collections.Counter(w for t in texts for w in pre_tokenize(t, lowercase=lowercase))
  # Sorted words make symbol lists, pair indices and thus the whole run independent of input order.
  items = sorted(words.items())
  seqs = [[w[0]] + [CONTINUATION + c for c in w[1:]] for w, _ in items]
  counts = [n for _, n in items]
  alphabet = sorted({s for seq in seqs for s in seq})
  vocab = list(SPECIAL_TOKENS) + alphabet
  if vocab_size < len(vocab):
    raise ValueError(f'vocab_size={vocab_size} is smaller than the {len(SPECIAL_TOKENS)} special tokens plus '
                     f'the {len(alphabet)} characters of the corpus ({len(vocab)}); increase vocab_size.')
  known = set(vocab)

  pair_counts: dict[tuple[str, str], int] = collections.defaultdict(int)
  where: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
  # Max-heap of (-count, merged string, pair) with lazy deletion: an entry whose count is no longer
  # the pair's current count is stale and skipped; every count change pushes a fresh entry.
  heap: list = []
  changed: set = set()

  def add(i, sign):
    seq = seqs[i]
    for p in zip(seq, seq[1:]):
      pair_counts[p] += sign * counts[i]
      changed.add(p)
      if sign > 0:
        where[p].add(i)

  def push_changed():
    for p in changed:
      n = pair_counts[p]
      if n >= min_frequency:
        heapq.heappush(heap, (-n, _merge(*p), p))
    changed.clear()

  for i in range(len(seqs)):
    add(i, +1)
  push_changed()
  while len(vocab) < vocab_size:
    while heap and -heap[0][0] != pair_counts[heap[0][2]]:
      heapq.heappop(heap)
    if not heap:
      break
    _, new, (a, b) = heapq.heappop(heap)
    for i in sorted(where.pop((a, b), ())):
      add(i, -1)
      seq, out, j = seqs[i], [], 0
      while j < len(seq):
        if j + 1 < len(seq) and seq[j] == a and seq[j + 1] == b:
          out.append(new)
          j += 2
        else:
          out.append(seq[j])
          j += 1
      seqs[i] = out
      add(i, +1)
    push_changed()
    if new not in known:
      known.add(new)
      vocab.append(new)
  return Tokenizer(vocab, lowercase=lowercase)
