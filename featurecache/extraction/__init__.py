"""Stage 1, the ``extract`` verb: a dataset and backbones in, committed features out."""
