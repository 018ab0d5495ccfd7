"""The engines: one run description (:mod:`~layertap.engines.run`), run locally or on Ray."""
