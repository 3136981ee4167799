"""Step 5, head ablation (paper §5.4, docs/method.md §6)."""
