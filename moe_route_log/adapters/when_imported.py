"""Run a function on a module right after it is imported (or now, if it already is).

The plugin is loaded in every vLLM process, before that process has imported the
parts of vLLM it will use; each process imports only its own (the API server never
loads the model runner, a worker never loads the HTTP server). Waiting for the
import, instead of importing everything at plugin load, keeps every process as
light as vLLM makes it and wraps exactly what that process runs.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable
from types import ModuleType

_callbacks: dict[str, list[Callable[[ModuleType], None]]] = {}
_lock = threading.Lock()


def when_imported(name: str, callback: Callable[[ModuleType], None]) -> None:
    """Call ``callback(module)`` once module ``name`` is imported (at once if it is)."""
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            _callbacks.setdefault(name, []).append(callback)
            if not any(isinstance(f, _Finder) for f in sys.meta_path):
                sys.meta_path.insert(0, _Finder())
            return
    callback(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: it hands the waited-for modules' specs a loader that runs
    the callbacks after the module's own code."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _callbacks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


class _Loader(importlib.abc.Loader):
    """The module's own loader, then the callbacks waiting for it."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        with _lock:
            callbacks = _callbacks.pop(module.__name__, [])
        for callback in callbacks:
            callback(module)

    def __getattr__(self, name: str):  # get_source, is_package, ... for tools and tracebacks
        return getattr(self._loader, name)
