"""The re-rankers' defaults that the command line shows, importable without torch."""

#: candidates per query the similarity-head re-ranker re-scores unless told otherwise (RVLR's Flickr30K
#: k_test is 128)
DEFAULT_K = 128
