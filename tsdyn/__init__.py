"""tsdyn: training dynamics of deep ReLU nets in the teacher-student setting.

``from tsdyn import load_run, load_runs``: the notebook API (:mod:`tsdyn.notebook`), imported on
first use, so that ``import tsdyn`` (and every command line) stays free of torch and pandas until
they are needed."""

LAZY = {"load_run": "tsdyn.notebook", "load_runs": "tsdyn.notebook"}


def __getattr__(name: str):
    if name in LAZY:
        import importlib
        return getattr(importlib.import_module(LAZY[name]), name)
    raise AttributeError(f"module 'tsdyn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *LAZY])
