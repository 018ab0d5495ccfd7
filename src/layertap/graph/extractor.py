"""Specs in, one multi-output model built once, features out.

:func:`feature_model` is the building block: the ``keras.Model`` that runs every tap
in one pass. :class:`Extractor` is the convenience on top: the same model, plus
input checks, batching and numpy results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import tree

from layertap._errors import BadInputError
from layertap.graph import keras_internals as ki
from layertap.graph.build import build_model, needed_inputs
from layertap.graph.resolve import Spec, resolve
from layertap.graph.walk import LayerInfo, graph_input_specs, inner_graph, input_names, walk
from layertap.io.schema import TapInfo

__all__ = ["Extractor", "TapInfo", "feature_model"]


def _shape(x: Any) -> tuple[int | None, ...] | None:
    shape = getattr(x, "shape", None)
    return None if shape is None else tuple(shape)


Layers = Spec | Sequence[Spec] | Mapping[str, Spec]


def _places_and_model(
    model: keras.Model, layers: Layers, input_shape: Any
) -> tuple[dict[str, LayerInfo], keras.Model]:
    """Walk ``model`` once, resolve ``layers`` to ``{key: place}``, build the tap model."""
    places = resolve(layers, model, walk(model, input_shape=input_shape))
    built = build_model(model, places, name=f"{model.name}_layertap", input_shape=input_shape)
    return places, built


def feature_model(model: keras.Model, layers: Layers, *, input_shape: Any = None) -> keras.Model:
    """A Functional ``keras.Model`` whose outputs are a dict of the tapped layers' outputs.

    Like torchvision's ``create_feature_extractor``: the result re-calls the user's
    layers (weights shared, never copied), runs one forward pass pruned after the
    deepest tap, and takes only the inputs the taps need. Its outputs are keyed as
    :attr:`Extractor.outputs` are: by alias for a dict of specs, by canonical path
    for a list (see :func:`~layertap.list_layers` for every path). ``model`` is not
    compiled or changed; its layers gain inbound nodes, as any Keras re-call adds,
    while ``model.output`` and its config stay as they were.

    Args:
        model: a Functional or Sequential ``keras.Model``, or one with its own
            ``call()`` (its taps are captured inside one call of it).
        layers: a spec, a list of specs or a dict alias -> spec.
        input_shape: for a model with its own ``call()`` that has not been built: the
            shape of one input batch, e.g. ``(None, 32, 32, 3)``.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="hidden"),
        ...                       keras.layers.Dense(1, name="out")])
        >>> fm = feature_model(m, {"h": "hidden", "y": -1})
        >>> {key: x.shape for key, x in fm.output.items()}
        {'h': (None, 3), 'y': (None, 1)}
        >>> out = fm.predict_on_batch(np.ones((2, 4), "float32"))
        >>> sorted((key, x.shape) for key, x in out.items())
        [('h', (2, 3)), ('y', (2, 1))]
    """
    return _places_and_model(model, layers, input_shape)[1]


class Extractor:
    """Tap any layers of a Keras graph model in one forward pass.

    Args:
        model: a Functional or Sequential ``keras.Model``; nested sub-models are
            walked at any depth.
        layers: a spec, a list of specs (results keyed by canonical path) or a dict
            alias -> spec (results keyed by alias). See the README for the grammar.
        input_shape: for a model with its own ``call()`` that has not been built: the
            shape of one input batch, e.g. ``(None, 32, 32, 3)``.
        jit_compile: ``True`` to run through XLA (TensorFlow, JAX) or ``torch.compile``;
            ``"auto"`` keeps Keras's default.

    Attributes:
        model: the multi-output ``keras.Model`` (dict outputs) that runs the taps, as
            :func:`feature_model` builds it; it shares the user's layers and can be
            saved, reloaded or called.
        outputs: ``{key: TapInfo}`` in result order.
        places: ``{key: LayerInfo}``, the place each key taps.

    Example:
        >>> import keras, numpy as np
        >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="hidden"),
        ...                       keras.layers.Dense(1, name="out")])
        >>> ex = Extractor(m, {"h": "hidden"})
        >>> ex.outputs["h"].shape
        (None, 3)
        >>> ex(np.ones((2, 4), "float32"))["h"].shape
        (2, 3)
    """

    def __init__(
        self,
        model: keras.Model,
        layers: Layers,
        *,
        input_shape: Any = None,
        jit_compile: bool | str = "auto",
    ) -> None:
        self.source = model
        self.places: dict[str, LayerInfo]
        self.model: keras.Model
        self.places, self.model = _places_and_model(model, layers, input_shape)
        graph = inner_graph(model)
        if graph is not None:
            self._input_names = input_names(graph)
            shapes = (
                [x.shape for x in graph.inputs]
                if input_shape is None
                else [x.shape for x in graph_input_specs(graph, input_shape)]
            )
            self._needed = needed_inputs(graph, self.places)
        else:
            self._input_names = [t.name for t in self.model.inputs]
            shapes = [x.shape for x in self.model.inputs]
            self._needed = list(range(len(shapes)))
        self._input_specs = [tuple(shape) for shape in shapes]
        if jit_compile != "auto":
            self.model.jit_compile = jit_compile
        outputs = self.model.output
        self.outputs: dict[str, TapInfo] = {
            key: TapInfo(
                name=key,
                path=place.path,
                shape=tuple(outputs[key].shape),
                dtype=str(outputs[key].dtype),
            )
            for key, place in self.places.items()
        }

    def __repr__(self) -> str:
        taps = ", ".join(f"{k!r}: {v.path!r}" for k, v in self.outputs.items())
        return f"Extractor({self.source.name!r}, {{{taps}}})"

    def _model_inputs(self, x: Any) -> Any:
        """``x`` as the source model takes it -> what ``self.model`` takes.

        Accepts what ``model(x)`` accepts: one array for a one-input model, a list in
        input order, or a dict keyed by input name. Inputs that no tap needs may be
        given (and are dropped); a name the model does not have is an error, like a
        missing, misshapen or non-array input (:class:`BadInputError`).
        """
        names, specs = self._input_names, self._input_specs
        if isinstance(x, Mapping):
            unknown = sorted(set(x) - set(names))
            missing = [n for i, n in enumerate(names) if n not in x and i in self._needed]
            if unknown or missing:
                raise BadInputError(
                    f"input dict keys {sorted(x)!r} do not match the model's inputs "
                    f"{names!r} (unknown: {unknown!r}, missing: {missing!r})"
                )
            arrays = {i: x[n] for i, n in enumerate(names) if i in self._needed}
        elif isinstance(x, list | tuple):
            if len(x) != len(names):
                raise BadInputError(
                    f"got {len(x)} input arrays, but the model has {len(names)} inputs: {names!r}"
                )
            arrays = {i: x[i] for i in self._needed}
        else:
            if len(names) != 1:
                raise BadInputError(
                    f"got one input array, but the model has {len(names)} inputs "
                    f"{names!r}: pass a list in that order or a dict keyed by name"
                )
            arrays = {0: x}
        for i, array in arrays.items():
            shape = _shape(array)
            if shape is None:
                raise BadInputError(f"input {names[i]!r} is a {type(array).__name__}, not an array")
            want = specs[i]
            fits = len(shape) == len(want) and all(
                w is None or w == s for w, s in zip(want[1:], shape[1:], strict=True)
            )
            if not fits:
                raise BadInputError(
                    f"input {names[i]!r} has shape {shape}, but the model expects "
                    f"{want} (None: any size)"
                )
        struct = ki.inputs_struct(self.model)
        if isinstance(struct, dict):
            return {names[i]: arrays[i] for i in self._needed}
        if isinstance(struct, list | tuple):
            return [arrays[i] for i in self._needed]
        return arrays[self._needed[0]]

    def __call__(self, x: Any) -> dict[str, np.ndarray]:
        """Run one batch; return ``{key: array}``.

        Example:
            >>> import keras, numpy as np
            >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
            >>> Extractor(m, ["d"])(np.zeros((5, 4), "float32"))["d"].shape
            (5, 3)
        """
        out = self.model.predict_on_batch(self._model_inputs(x))
        return {key: np.asarray(out[key]) for key in self.outputs}

    def predict(
        self, x: Any, *, batch_size: int | None = 32, verbose: int | str = 0
    ) -> dict[str, np.ndarray]:
        """Run ``x`` in batches through a compiled function; return ``{key: array}``.

        ``x`` is anything ``keras.Model.predict`` takes: arrays (checked against the
        model's inputs), a ``tf.data.Dataset`` or a ``keras.utils.PyDataset``.

        Example:
            >>> import keras, numpy as np
            >>> m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
            >>> Extractor(m, {"f": 0}).predict(np.zeros((70, 4), "float32"))["f"].shape
            (70, 3)
        """
        if not (isinstance(x, Mapping | list | tuple) or _shape(x) is not None):
            out = self.model.predict(x, batch_size=batch_size, verbose=verbose)
            return {key: np.asarray(out[key]) for key in self.outputs}
        return self._predict_arrays(self._model_inputs(x), batch_size or 32, verbose)

    def _predict_arrays(self, x: Any, batch_size: int, verbose: int | str) -> dict[str, np.ndarray]:
        """Batches through the compiled predict step, filling preallocated outputs.

        Unlike ``keras.Model.predict``, which keeps every batch's outputs and joins them
        at the end, each batch is copied once into its place: large feature maps cost
        one copy, and memory is the result plus one batch.
        """
        lengths = {int(_shape(a)[0]) for a in tree.flatten(x)}  # type: ignore[index,arg-type]
        if len(lengths) != 1:
            raise BadInputError(
                f"input arrays have different numbers of rows {sorted(lengths)}; "
                "every input needs one row per example"
            )
        n = lengths.pop()
        results = {
            key: np.empty((n, *(int(d) for d in info.shape[1:] if d is not None)), info.dtype)
            for key, info in self.outputs.items()
            if None not in info.shape[1:]
        }
        pieces: dict[str, list[np.ndarray]] = {k: [] for k in self.outputs if k not in results}
        bar = keras.utils.Progbar(n) if verbose not in (0, "0", "silent") else None
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            rows = slice(start, stop)
            out = self.model.predict_on_batch(tree.map_structure(lambda a, r=rows: a[r], x))
            for key in self.outputs:
                if key in results:
                    results[key][start:stop] = out[key]
                else:  # a dynamic shape: join at the end
                    pieces[key].append(np.asarray(out[key]))
            if bar is not None:
                bar.update(stop)
        for key, parts in pieces.items():
            results[key] = np.concatenate(parts) if parts else np.empty((0,), "float32")
        return {key: results[key] for key in self.outputs}
