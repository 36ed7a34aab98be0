"""Run code written for snnax unchanged: make ``import snnax...`` import snnkern.

``install()`` registers every module of ``snnkern.snn``, ``snnkern.functional`` and ``snnkern.utils``
(and ``snnkern`` itself) under its snnax name in ``sys.modules`` (``snnax.snn.layers.lif`` is
``snnkern.snn.layers.lif``, the same module object), plus an import hook that maps any other
``snnax.*`` name the same way. Call it before the first ``import snnax``::

    import snnkern.snnax_alias; snnkern.snnax_alias.install()
    import snnax.snn as snn          # snnkern.snn

From the shell, ``python -m snnkern.snnax_alias script.py [args...]`` runs an snnax script with the
alias installed (as ``python script.py [args...]`` would run it). See docs/migrating.md.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import pkgutil
import runpy
import sys

__all__ = ["install", "uninstall", "ALIAS", "TARGET"]

ALIAS, TARGET = "snnax", "snnkern"
_SUBPACKAGES = ("snn", "functional", "utils")


def _target_name(name: str) -> str:
    return TARGET + name[len(ALIAS):]


class _AliasLoader(importlib.abc.Loader):
    def create_module(self, spec):
        return importlib.import_module(_target_name(spec.name))

    def exec_module(self, module):
        pass   # the snnkern module is already executed


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Finds ``snnax`` / ``snnax.*`` as the snnkern module of the same path."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != ALIAS and not fullname.startswith(ALIAS + "."):
            return None
        if importlib.util.find_spec(_target_name(fullname)) is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader())


_FINDER = _AliasFinder()


def install() -> list:
    """Make ``snnax`` and every ``snnax.<path>`` resolve to ``snnkern.<path>``; returns the names
    registered now. Replaces an ``snnax`` imported before (its modules are dropped from
    ``sys.modules``). Idempotent."""
    uninstall()
    root = importlib.import_module(TARGET)
    names = [ALIAS]
    sys.modules[ALIAS] = root
    for sub in _SUBPACKAGES:
        pkg = importlib.import_module(f"{TARGET}.{sub}")
        mods = [pkg] + [importlib.import_module(m.name)
                        for m in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + ".")]
        for mod in mods:
            alias = ALIAS + mod.__name__[len(TARGET):]
            sys.modules[alias] = mod
            names.append(alias)
    sys.meta_path.insert(0, _FINDER)
    return names


def uninstall() -> None:
    """Remove the alias (and any ``snnax`` modules) from ``sys.modules`` and the import hook."""
    for name in [n for n in sys.modules if n == ALIAS or n.startswith(ALIAS + ".")]:
        del sys.modules[name]
    while _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m snnkern.snnax_alias script.py [args...]\n"
              "runs an snnax script with `import snnax` resolved to snnkern")
        raise SystemExit(0 if argv else 2)
    install()
    sys.argv = argv
    sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))   # as `python script.py` sets it
    runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
