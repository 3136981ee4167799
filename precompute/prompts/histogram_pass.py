"""The compiled CPU pass of the activation histograms (precompute/prompts/histogram.py, docs/method.md §2),
apart so that numba is imported only by a scan that counts on the CPU. Compiled on first use and
cached on disk (numba's ``cache=True``, beside this file in ``__pycache__``; the cache is keyed by
this file's size and time stamp, so a change of this file, or of the module's import name
``context_lookups.precompute.prompts.histogram_pass``, needs a change of its text to invalidate it)."""

from __future__ import annotations

import numba


@numba.njit(nogil=True, cache=True)
def count_keys(bits, real, shift, key_bins, counts):  # pragma: no cover - compiled
    """Add one to ``counts[key_bins[(bits[b, p, i] >> shift) + 1024], i]`` for every real
    position ``(b, p)`` and neuron ``i``.

    Args:
        bits: ``[batch, pos, d_mlp]`` activations' bit patterns: int32 (float32) or int16
            (bfloat16), C-contiguous.
        real: ``[batch, pos]`` bool, the positions counted.
        shift: 21 for int32, 5 for int16: what is left is the 11-bit key (sign, exponent, two
            mantissa bits) as a signed number, ``-1024 .. 1023``.
        key_bins: ``[2048]`` int64, the bin of each key + 1024.
        counts: ``[n_bins, d_mlp]``, added to in place.
    """
    for b in range(bits.shape[0]):
        for p in range(bits.shape[1]):
            if real[b, p]:
                row = bits[b, p]
                for d in range(bits.shape[2]):
                    counts[key_bins[(row[d] >> shift) + 1024], d] += 1
