"""Read-only findings over the steps' rows: the paper's score tables and the verdict
(docs/method.md §5, §8)."""
