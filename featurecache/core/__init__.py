"""The torch-free core beside the cache: the request (FeatureSpec), validation, paths, processes."""
