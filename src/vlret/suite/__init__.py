"""``vlret bench``: every method and their combinations on the same data, seeds and budget.

:mod:`.rows` says what the rows are, :mod:`.budget` fits training into a time budget, :mod:`.cells` runs
one row under one seed, :mod:`.summary` aggregates over seeds and :mod:`.page` draws the HTML page;
:func:`run_suite` (:mod:`.run`) ties them together.
"""

from vlret.suite.run import SuiteSettings, run_suite

__all__ = ["SuiteSettings", "run_suite"]
