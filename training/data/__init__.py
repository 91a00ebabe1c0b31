"""Datasets of the training cascade: the sample contract, sources, the prepare cache, pairs."""
