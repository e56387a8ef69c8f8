"""Stage 2, heads and their hyper-parameters: classifiers, probes, protocols, search, shots."""
