"""The Keras side: load a model, walk it into places, resolve specs, build the feature model.

Everything here imports Keras. Every use of a Keras private attribute is in
:mod:`layertap.graph.keras_internals`, so a Keras upgrade is fixed in one place.
The public names are re-exported by :mod:`layertap`.
"""
