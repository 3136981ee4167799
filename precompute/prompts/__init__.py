"""Step 2, max-activating prompts (paper §4.2, docs/method.md §2): the streaming scan, its
activation histograms and trimming."""
