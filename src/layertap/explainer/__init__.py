"""Stage 6, explain: class-activation and attribution maps (``maps``: Keras-free numpy;
``methods``: :func:`explain` over :meth:`layertap.Extractor.gradients`)."""
