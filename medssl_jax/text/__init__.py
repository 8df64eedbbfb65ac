"""Text utilities for image+report models: a locally trained WordPiece tokenizer."""
from medssl_jax.text.tokenizer import SPECIAL_TOKENS, Tokenizer, pre_tokenize, train_tokenizer

__all__ = ['SPECIAL_TOKENS', 'Tokenizer', 'pre_tokenize', 'train_tokenizer']
