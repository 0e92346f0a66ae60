"""VISA (ICML 2025): training-free re-ranking of a retriever's top-K by visual abstraction.

:mod:`.config` (the roles and settings), :mod:`.prompts` (the prompts and the parsing of replies),
:mod:`.pipeline` (the stages, unit by unit, cached), :mod:`.store` (the caches), :mod:`.fusion` (score
fusion), :mod:`.run` (a whole run over an evaluation split, sharded and merged) and :mod:`.ray_engine` (its
shards on a Ray cluster).
"""
