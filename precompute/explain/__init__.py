"""Step 4, explanations (paper §4.4, docs/method.md §4-§5): the explainers, the explanation
score and its storage."""
