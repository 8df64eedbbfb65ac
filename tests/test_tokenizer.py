"""Tests for the WordPiece tokenizer (medssl_jax.text): trained locally, saved and read as the Hugging Face
`tokenizers` library writes it, and BERT vocab.txt files."""
import json

import numpy as np
import pytest
import tokenizers

from medssl_jax.synthetic import cxr as synthetic_cxr
from medssl_jax.text import SPECIAL_TOKENS, Tokenizer, pre_tokenize, train_tokenizer

CORPUS = [
    'No pleural effusion. Heart size is normal.',
    'Small right pleural effusion. The heart is enlarged.',
    'Left lower zone opacity consistent with consolidation.',
    'No focal consolidation. No pleural effusion.',
    'Cardiomegaly and bilateral pleural effusions, 2.5 cm.',
] * 3


@pytest.fixture(scope='module')
def reports():
  return [synthetic_cxr.make_report(synthetic_cxr.sample_findings(i), index=i) for i in range(200)]


@pytest.fixture(scope='module')
def tok(reports):
  return train_tokenizer(reports, vocab_size=200)


def test_special_token_ids():
  t = train_tokenizer(CORPUS, vocab_size=80)
  assert t.vocab[:5] == SPECIAL_TOKENS == ('[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]')
  assert (t.pad_id, t.unk_id, t.cls_id, t.sep_id, t.mask_id) == (0, 1, 2, 3, 4)


def test_pre_tokenize_splits_punctuation_and_keeps_numbers():
  assert pre_tokenize('No  pleural-effusion; 2.5 cm (R).') == ['no', 'pleural', '-', 'effusion', ';', '2.5', 'cm',
                                                               '(', 'r', ')', '.']
  assert pre_tokenize('No Effusion', lowercase=False) == ['No', 'Effusion']


def test_round_trip_on_known_words(tok):
  text = 'No pleural effusion. The heart is enlarged.'
  ids, mask = tok.encode(text, max_length=32)
  assert tok.unk_id not in ids[mask].tolist()
  assert tok.decode(ids) == text.lower()
  # Frequent whole words of the corpus are single tokens.
  for word in ('pleural', 'effusion', 'consolidation', 'heart'):
    assert tok.tokenize(word) == [word]


def test_unseen_character_gives_unk(tok):
  assert tok.tokenize('effusion') == ['effusion']
  assert tok.tokenize('effusiön') == ['[UNK]']  # 'ö' never seen: the whole word is unknown (as in BERT).
  assert tok.tokenize('no € effusion') == ['no', '[UNK]', 'effusion']


def test_max_length_padding_and_truncation(tok):
  ids, mask = tok.encode('no effusion', max_length=8)
  assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape == (8,)
  body = [tok.token_to_id['no'], tok.token_to_id['effusion']]
  assert ids.tolist() == [tok.cls_id, *body, tok.sep_id, 0, 0, 0, 0]
  assert mask.tolist() == [True] * 4 + [False] * 4
  long = ' '.join(['effusion'] * 20)
  ids, mask = tok.encode(long, max_length=6)
  assert ids.tolist() == [tok.cls_id] + [tok.token_to_id['effusion']] * 4 + [tok.sep_id] and mask.all()
  ids, mask = tok.encode('', max_length=3)
  assert ids.tolist() == [tok.cls_id, tok.sep_id, 0] and mask.tolist() == [True, True, False]
  with pytest.raises(ValueError, match='max_length'):
    tok.encode('x', max_length=1)
  batch_ids, batch_mask = tok.encode_batch(['no effusion', long], max_length=8)
  assert batch_ids.shape == batch_mask.shape == (2, 8)
  np.testing.assert_array_equal(batch_ids[0], tok.encode('no effusion', max_length=8)[0])


def test_deterministic_and_save_load(tok, reports, tmp_path):
  again = train_tokenizer(list(reversed(reports)), vocab_size=200)  # Input order does not matter.
  assert again == tok and again.vocab == tok.vocab
  tok.save(tmp_path / 'tok.json')
  loaded = Tokenizer.load(tmp_path / 'tok.json')
  assert loaded == tok
  np.testing.assert_array_equal(loaded.encode(reports[3], max_length=64)[0], tok.encode(reports[3], max_length=64)[0])
  (tmp_path / 'bad.json').write_text(json.dumps({'vocab': []}))
  with pytest.raises(ValueError, match='bad.json'):
    Tokenizer.load(tmp_path / 'bad.json')


@pytest.mark.parametrize('vocab_size', [60, 90, 150])
def test_vocab_size_respected(reports, vocab_size):
  t = train_tokenizer(reports, vocab_size=vocab_size)
  assert t.vocab_size == vocab_size  # The corpus has enough frequent pairs to fill each size.
  assert len(set(t.vocab)) == vocab_size
  big = train_tokenizer(CORPUS, vocab_size=10_000)
  assert big.vocab_size < 10_000  # Stops when no pair occurs min_frequency times.
  with pytest.raises(ValueError, match='vocab_size=8'):
    train_tokenizer(CORPUS, vocab_size=8)


def test_min_frequency_limits_merges():
  t = train_tokenizer(['ab ab cd'], vocab_size=100, min_frequency=2)
  # Alphabet (sorted) ##b, ##d, a, c; only 'a'+'##b' occurs twice, so 'ab' is the one merge.
  assert t.vocab[5:] == ('##b', '##d', 'a', 'c', 'ab')
  assert t.tokenize('ab cd') == ['ab', 'c', '##d']


def test_hand_checked_wordpiece_split():
  # 'low' x5, 'lower' x2, 'newest' x3. Pair counts: l+##o 7, ##o+##w 7, ##w+##e 5, n+##e 3, ##e+##w 3,
  # ##e+##s 3, ##s+##t 3, ##e+##r 2. Hand trace (ties go to the merged string that sorts first):
  #   1. '##ow' (7, beats 'lo' as '#' < 'l')   2. 'low' = l+##ow (7)
  #   3. count-3 pairs of 'newest' (##w+##e drops to 3 once ##o+##w is merged): '##es' < '##ew' < ...
  #   4. '##est' = ##es+##t (3; beats '##ew' and 'ne')   5. '##ew' = ##e+##w (3; beats '##west', 'ne')
  texts = ['low'] * 5 + ['lower'] * 2 + ['newest'] * 3
  t = train_tokenizer(texts, vocab_size=len(SPECIAL_TOKENS) + 8 + 5)
  alphabet = ('##e', '##o', '##r', '##s', '##t', '##w', 'l', 'n')
  assert t.vocab[5:5 + len(alphabet)] == alphabet
  assert t.vocab[5 + len(alphabet):] == ('##ow', 'low', '##es', '##est', '##ew')
  assert t.tokenize('lower') == ['low', '##e', '##r']
  assert t.tokenize('lowest') == ['low', '##est']
  assert t.tokenize('newest') == ['n', '##ew', '##est']
  assert t.tokenize('slow') == ['[UNK]']  # 's' only ever occurs inside a word ('##s').


def test_greedy_longest_match_on_a_hand_made_vocab():
  v = Tokenizer(list(SPECIAL_TOKENS) + ['un', 'unaff', '##aff', '##ected', '##e', '##c', '##t', '##d'])
  assert v.tokenize('unaffected') == ['unaff', '##ected']
  assert v.tokenize('unected') == ['un', '##ected']
  assert v.tokenize('unx') == ['[UNK]']
  assert v.decode(v.encode('unaffected unected', max_length=10)[0]) == 'unaffected unected'


def _naive_train(texts, vocab_size, min_frequency):
  """Straightforward WordPiece training: recount every pair after each merge."""
  words = {}
  for t in texts:
    for w in pre_tokenize(t):
      words[w] = words.get(w, 0) + 1
  seqs = {w: [w[0]] + ['##' + c for c in w[1:]] for w in words}
  vocab = list(SPECIAL_TOKENS) + sorted({s for q in seqs.values() for s in q})
  while len(vocab) < vocab_size:
    pairs = {}
    for w, q in seqs.items():
      for p in zip(q, q[1:]):
        pairs[p] = pairs.get(p, 0) + words[w]
    cands = [(-n, a + b[2:] if b.startswith('##') else a + b, (a, b)) for (a, b), n in pairs.items()
             if n >= min_frequency]
    if not cands:
      break
    _, new, (a, b) = min(cands)
    for w, q in seqs.items():
      out, j = [], 0
      while j < len(q):
        if j + 1 < len(q) and (q[j], q[j + 1]) == (a, b):
          out.append(new)
          j += 2
        else:
          out.append(q[j])
          j += 1
      seqs[w] = out
    if new not in vocab:
      vocab.append(new)
  return tuple(vocab)


@pytest.mark.parametrize('min_frequency', [1, 2, 4])
def test_matches_a_naive_trainer_on_random_words(min_frequency):
  rng = np.random.default_rng(min_frequency)
  words = [''.join(rng.choice(list('abcdef'), rng.integers(1, 7))) for _ in range(60)]
  texts = [' '.join(rng.choice(words, 8)) for _ in range(40)]
  assert train_tokenizer(texts, vocab_size=120, min_frequency=min_frequency).vocab == _naive_train(
      texts, 120, min_frequency)


def test_saved_file_is_a_standard_tokenizer_json(tok, reports, tmp_path):
  """What save() writes is the library's own format: tokenizers.Tokenizer.from_file reads it and splits alike."""
  tok.save(tmp_path / 'tokenizer.json')
  hf = tokenizers.Tokenizer.from_file(str(tmp_path / 'tokenizer.json'))
  for text in reports[:20] + ['Effusiön, 2.5 cm (left).']:
    ids, mask = tok.encode(text, max_length=128)
    assert hf.encode(text, add_special_tokens=False).ids == ids[mask].tolist()[1:-1]
  assert hf.token_to_id('[PAD]') == 0 and hf.get_vocab_size() == tok.vocab_size


def test_bert_vocab_txt(tmp_path):
  """A BERT vocab.txt (special tokens where BERT puts them, not first) with BERT's lowercasing, accent stripping
  and punctuation splitting; ids are the file's line numbers."""
  vocab = ['[PAD]', '[unused0]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', 'the', 'heart', 'is', 'en', '##larg', '##ed', '.',
           '2', '##5']
  (tmp_path / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
  t = Tokenizer.load(tmp_path / 'vocab.txt')
  assert (t.pad_id, t.unk_id, t.cls_id, t.sep_id, t.mask_id) == (0, 2, 3, 4, 5) and t.vocab_size == len(vocab)
  ids, mask = t.encode('The HEART is Enlarged.', max_length=12)
  assert ids.tolist() == [3, 6, 7, 8, 9, 10, 11, 12, 4, 0, 0, 0] and mask.sum() == 9
  assert t.tokenize('2.5 thé') == ['2', '.', '[UNK]', 'the']  # BERT splits numbers at '.'; 'é' loses its accent.
  assert t.decode(ids) == 'the heart is enlarged.'
  (tmp_path / 'no_specials.txt').write_text('the\nheart\n')
  with pytest.raises(ValueError, match=r"no_specials.txt: the vocabulary lacks the special token\(s\) \['\[PAD\]'"):
    Tokenizer.load(tmp_path / 'no_specials.txt')


def test_older_vocabulary_files_still_load(tok, reports, tmp_path):
  """A workdir's tokenizer.json in the medssl_jax.wordpiece format ({"format": ..., "vocab": [...]}) loads to the same
  tokenizer, so resumed and evaluated runs encode their reports exactly as when trained."""
  (tmp_path / 'old.json').write_text(json.dumps({'format': 'medssl_jax.wordpiece', 'version': 1, 'lowercase': True,
                                                 'max_chars_per_word': 100, 'vocab': list(tok.vocab)}))
  old = Tokenizer.load(tmp_path / 'old.json')
  assert old == tok
  np.testing.assert_array_equal(old.encode_batch(reports[:10], max_length=64)[0],
                                tok.encode_batch(reports[:10], max_length=64)[0])
