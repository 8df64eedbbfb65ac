"""Pretraining-data selection (SEPT-style): the pool records most similar to a target task's images, by nearest-
neighbour retrieval in an encoder's embedding space, written as a subset file to pretrain on; mode "select_data"."""
