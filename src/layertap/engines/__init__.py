"""The engines: one run description (:mod:`~layertap.engines.run`), run locally or on Ray.

Both engines are peers behind one small interface, :class:`Engine`: a name, and
``extract(run, on_failed)`` that writes the run's output and returns what it wrote.
They share the decoding, the reducers, the tap schema and the writers' formats.

Example:
    >>> get_engine("local").name
    'local'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from layertap._errors import BadInputError

if TYPE_CHECKING:
    from layertap.engines.run import Run

__all__ = ["Engine", "get_engine"]


class Engine(Protocol):
    """What the command line (or any caller) needs of an engine."""

    name: str

    def extract(self, run: Run, on_failed: Callable[[str, str], None] | None = None) -> Any:
        """Write ``run``'s output; call ``on_failed(id, reason)`` for each skipped input.

        Returns the engine's result: ``rows``, ``failed``, ``resumed``, ``shapes`` and
        ``already_complete`` at least.
        """
        ...


def get_engine(name: str) -> Engine:
    """The engine called ``name`` (``"local"`` or ``"ray"``)."""
    if name == "local":
        from layertap.engines.local import LocalEngine

        return LocalEngine()
    if name == "ray":
        from layertap.engines.ray import RayEngine

        return RayEngine()
    raise BadInputError(f"unknown engine {name!r}; valid: 'local', 'ray'")
