"""Step 3, head attribution (paper §4.3, docs/method.md §3): attribution of each trimmed prompt
to the upstream heads, active heads, the context look-up and the kept (neuron, head) pairs."""
