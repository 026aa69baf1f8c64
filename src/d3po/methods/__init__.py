"""Training methods as plug-ins: one module per method, found here.

Every module of this package (and of any ``d3po/methods/`` folder on ``sys.path``, so that a
method can live outside the checkout) that defines a subclass of :class:`Method` is a method,
named by its class attribute ``name``. This is the one registry: the training loop
(:func:`make_method`), the settings check (:func:`method_class`, :func:`parse_options`) and
the workflow's config check and wildcards (:func:`method_classes`) all read it.

Adding a method is one file: see docs/design.md ("Methods") and README.md.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from d3po.errors import ConfigError
from d3po.methods.base import Feedback, Items, Method, Policy, Signal

if TYPE_CHECKING:
    from d3po.config import TrainSettings

# d3po/methods/ folders elsewhere on sys.path join the package (pkgutil.extend_path does this
# for top-level packages only): a method can live outside the checkout, one file on PYTHONPATH.
__path__ += [
    str(folder)
    for entry in sys.path
    if (folder := Path(entry or ".") / "d3po" / "methods").is_dir()
    and not any(folder.samefile(known) for known in __path__)
]
__all__ = [
    "Feedback",
    "Items",
    "Method",
    "Policy",
    "judged_methods",
    "make_method",
    "method_class",
    "method_classes",
]


@functools.cache
def method_classes() -> dict[str, type[Method]]:
    """{name: method class} of every method module, sorted by name."""
    found: dict[str, type[Method]] = {}
    for module_info in pkgutil.iter_modules(__path__, prefix=f"{__name__}."):
        for method in _declared_methods(importlib.import_module(module_info.name)):
            _check_declarations(method)
            if method.name in found:
                raise RuntimeError(
                    f"method name '{method.name}' is defined twice: in "
                    f"{found[method.name].__module__} and {method.__module__}"
                )
            found[method.name] = method
    return dict(sorted(found.items()))


def judged_methods() -> list[str]:
    """Names of the methods that train on a judged sample set (people's pairs)."""
    return [name for name, cls in method_classes().items() if cls.accepts_judgements]


def _declared_methods(module) -> list[type[Method]]:
    """The Method subclasses a module defines with a ``name`` of their own."""
    return [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Method)
        and value.__module__ == module.__name__
        and "name" in vars(value)
    ]


def _check_declarations(method: type[Method]) -> None:
    """A new method's missing declaration is named when the registry loads it, not later as an
    AttributeError of whichever step reads it first."""
    missing = [
        key for key in ("summary", "signal", "accepts_judgements") if not hasattr(method, key)
    ]
    if missing:
        raise TypeError(f"method '{method.name}' ({method.__module__}) does not declare {missing}")
    if method.signal not in get_args(Signal):
        raise TypeError(
            f"method '{method.name}' ({method.__module__}): signal must be one of "
            f"{get_args(Signal)}, got {method.signal!r}"
        )


def method_class(name: str, where: str = "method") -> type[Method]:
    """The class of method ``name``; ConfigError naming ``where`` and the known methods."""
    classes = method_classes()
    if name not in classes:
        raise ConfigError(f"{where}: unknown method '{name}'; known methods: {', '.join(classes)}")
    return classes[name]


def parse_options(name: str, options: dict[str, Any], where: str) -> Any:
    """Method ``name``'s options dataclass from a config block, every key checked."""
    from d3po.config import parse

    options_class = method_class(name).Options
    try:
        return parse(options_class, options, where)
    except ValueError as error:
        message = str(error)  # from the Options' own checks: "field: ...", without the prefix
        raise ConfigError(message if message.startswith(where) else f"{where}.{message}") from None


def make_method(settings: TrainSettings) -> Method:
    cls = method_class(settings.method)
    options = parse_options(settings.method, settings.method_options, "method_options")
    return cls(options, settings.training)
