"""Step 1, next-token neurons (paper §4.1, docs/method.md §1): congruence ``W_out · W_U`` and the
selection of next-token and random neurons."""
