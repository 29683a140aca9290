"""Method plugins and model cards.

Methods live in ``restorekit.methods.<name>`` and register themselves when
imported; :func:`get_method` imports them lazily so that ``import restorekit``
stays light.
"""

from __future__ import annotations

import importlib

from .errors import RestoreKitError
from .weights import ModelCard

#: method name -> module that registers it
METHOD_MODULES = {
    "diffpir": "restorekit.methods.diffpir",
    "diffir": "restorekit.methods.diffir",
    "diffbir": "restorekit.methods.diffbir",
    "classical": "restorekit.methods.classical",
}

_METHODS: dict[str, type] = {}
_CARDS: dict[str, ModelCard] = {}


def register_method(cls):
    """Class decorator: make a :class:`~restorekit.api.Restorer` subclass available by ``cls.name``."""
    _METHODS[cls.name] = cls
    return cls


def register_card(card: ModelCard) -> ModelCard:
    _CARDS[card.name] = card
    return card


def _load_all() -> None:
    for mod in METHOD_MODULES.values():
        importlib.import_module(mod)


def get_method(name: str):
    if name not in _METHODS and name in METHOD_MODULES:
        importlib.import_module(METHOD_MODULES[name])
    if name not in _METHODS:
        raise RestoreKitError(f"unknown method {name!r}; available: {', '.join(sorted(METHOD_MODULES))}")
    return _METHODS[name]


def available_methods() -> list[str]:
    return sorted(METHOD_MODULES)


def get_card(name: str) -> ModelCard | None:
    _load_all()
    return _CARDS.get(name)


def model_cards(method: str | None = None) -> list[ModelCard]:
    _load_all()
    return [c for c in _CARDS.values() if method is None or c.method == method]
