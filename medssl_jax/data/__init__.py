"""Data: the embedded synthetic fundus generator and the tfds.data_source + grain pipelines."""
