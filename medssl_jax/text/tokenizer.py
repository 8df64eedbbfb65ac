"""A small WordPiece tokenizer trained locally on a report corpus (pure Python + numpy, no downloads).

Training follows the usual WordPiece recipe (as in HuggingFace's WordPieceTrainer): start from the
characters of the pre-tokenised words (a character inside a word carries the continuation prefix
"##"), then repeatedly merge the most frequent adjacent pair of symbols into a new vocabulary entry
until `vocab_size` is reached or no pair occurs `min_frequency` times. Ties are broken by the merged
token string, so training is deterministic. Encoding is BERT's greedy longest-match-first split of
each word; a word that cannot be split (it holds a character never seen in training) becomes [UNK].
"""
from __future__ import annotations

import collections
import heapq
import json
import pathlib
import re
from typing import Iterable, Sequence

import numpy as np

PAD, UNK, CLS, SEP, MASK = '[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)  # Their ids are their positions: [PAD] = 0.
CONTINUATION = '##'
_FORMAT = 'medssl_jax.wordpiece'
# Words: runs of letters; numbers (digits with an optional decimal part, kept whole); any other
# non-space character on its own (punctuation).
_WORD = re.compile(r'\d+(?:\.\d+)?|[^\W\d_]+|[^\w\s]|_')
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


class Tokenizer:
  """A trained WordPiece vocabulary with encode / decode / save / load."""

  def __init__(self, vocab: Sequence[str], *, lowercase: bool = True, max_chars_per_word: int = 100):
    """`vocab` lists the tokens in id order and must start with SPECIAL_TOKENS."""
    vocab = tuple(vocab)
    if vocab[:len(SPECIAL_TOKENS)] != SPECIAL_TOKENS:
      raise ValueError(f'vocab must start with the special tokens {SPECIAL_TOKENS}, got {vocab[:5]}.')
    if len(set(vocab)) != len(vocab):
      dup = sorted(t for t, n in collections.Counter(vocab).items() if n > 1)
      raise ValueError(f'vocab has duplicate tokens: {dup[:10]}.')
    self.vocab = vocab
    self.lowercase = bool(lowercase)
    self.max_chars_per_word = int(max_chars_per_word)
    self.token_to_id = {t: i for i, t in enumerate(vocab)}
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = range(len(SPECIAL_TOKENS))

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  def __eq__(self, other) -> bool:
    return (isinstance(other, Tokenizer) and self.vocab == other.vocab and self.lowercase == other.lowercase
            and self.max_chars_per_word == other.max_chars_per_word)

  def __repr__(self) -> str:
    return f'Tokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase})'

  def _split_word(self, word: str) -> list[str]:
    """Greedy longest-match-first WordPiece split; [UNK] for the whole word if any part fails."""
    if len(word) > self.max_chars_per_word:
      return [UNK]
    pieces, start = [], 0
    while start < len(word):
      end = len(word)
      while end > start:
        piece = word[start:end] if start == 0 else CONTINUATION + word[start:end]
        if piece in self.token_to_id:
          break
        end -= 1
      if end == start:
        return [UNK]
      pieces.append(piece)
      start = end
    return pieces

  def tokenize(self, text: str) -> list[str]:
    """The WordPiece tokens of `text`, without [CLS] / [SEP]."""
    return [p for w in pre_tokenize(text, lowercase=self.lowercase) for p in self._split_word(w)]

  def encode(self, text: str, *, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32 [max_length], mask bool [max_length]) of "[CLS] tokens [SEP]" padded with [PAD].

    Tokens beyond max_length - 2 are dropped ([SEP] is always kept). `mask` is True on real tokens
    ([CLS] and [SEP] included) and False on padding.
    """
    if max_length < 2:
      raise ValueError(f'max_length must be >= 2 to hold [CLS] and [SEP], got {max_length}.')
    body = [self.token_to_id[t] for t in self.tokenize(text)][:max_length - 2]
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

  def save(self, path: str | pathlib.Path) -> None:
    """Writes the tokenizer as JSON (vocabulary in id order plus settings)."""
    data = {'format': _FORMAT, 'version': 1, 'lowercase': self.lowercase,
            'max_chars_per_word': self.max_chars_per_word, 'vocab': list(self.vocab)}
    pathlib.Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=0))

  @classmethod
  def load(cls, path: str | pathlib.Path) -> 'Tokenizer':
    """Reads a tokenizer written by save()."""
    data = json.loads(pathlib.Path(path).read_text())
    if not isinstance(data, dict) or data.get('format') != _FORMAT:
      raise ValueError(f'{path} is not a {_FORMAT} tokenizer file (expected a JSON object with '
                       f'"format": "{_FORMAT}").')
    return cls(data['vocab'], lowercase=data['lowercase'], max_chars_per_word=data['max_chars_per_word'])


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
