"""Data: the tfds.data_source + grain pipelines, label subsets, foreground masks and the shared real data."""
