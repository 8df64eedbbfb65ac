"""Deterministic synthetic datasets (numpy and PIL only): fundus photographs, chest X-rays with reports, shape
volumes. The TFDS builders in tfds_builders/synthetic_* write them; tests and notebooks draw them directly."""
