"""``vlret bench``: every method and their combinations on the same data, seeds and budget.

:mod:`.rows` says what the rows are, :mod:`.budget` fits training into a time budget, :mod:`.cells` runs
one row under one seed, :mod:`.summary` aggregates over seeds and :mod:`.page` draws the HTML page;
:func:`run_suite` (:mod:`.run`) ties them together.
"""

__all__ = ["SuiteSettings", "run_suite"]


def __getattr__(name: str):
    # imported on first use: the command line reads the row names (:mod:`.rows`) without loading torch
    if name in __all__:
        from vlret.suite import run

        return getattr(run, name)
    raise AttributeError(f"module 'vlret.suite' has no attribute {name!r}")
