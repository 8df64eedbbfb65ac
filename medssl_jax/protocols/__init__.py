"""What modes share to evaluate encoders on a dataset from a config: which encoders (encoders.py) and
which records, protocol and result files (probe.py)."""
