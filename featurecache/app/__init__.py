"""The application layer: the command line, the demo and prediction.

The only code that imports both stage 1 (``featurecache.models``, ``featurecache.engines``)
and stage 2 (``pipelines``).
"""
