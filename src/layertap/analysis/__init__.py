"""Stage 12, analyse: Keras-free answers from features, read through one chunked reader.

``probe``: per-layer linear probes (scikit-learn cross-validation); ``similarity``: CKA
and RSA between layers or models; ``labels``: labels matched to rows by path;
``reduction``: streamed PCA and random projection of a feature file (``reduce``);
``plot``: their pictures. Nothing here imports Keras (``tests/test_layout.py``).
"""
