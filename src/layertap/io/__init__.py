"""The Keras-free side: inputs to batches, reducers, the tap schema and the writers.

Nothing here imports Keras (``tests/test_layout.py`` checks it): a Ray write task
imports this package without starting a backend.
"""
