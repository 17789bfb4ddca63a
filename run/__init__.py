"""Tokenization, SQuAD features and metric, backends, engine build, inference, perf and compare."""
