"""Fixed-bin histograms of every analysed neuron's activations over the scanned tokens
(docs/method.md §2, "Activation distributions").

**The bins** (:data:`SCHEME`, fixed before any scan, the same for every model and activation
function): the magnitude edges ``e_j = 2^-10 · 2^(j // 4) · (1 + (j % 4) / 4)`` for
``j = 0..80``, i.e. four equal-width bins in every octave from ``2^-10`` (≈ 0.000977) to
``2^10 = 1024``, mirrored on the negative side; a central bin ``(-2^-10, 2^-10)``; and an
underflow and an overflow bin, ``(-∞, -1024]`` and ``[1024, ∞)``. With
``r(|a|) = #{j : e_j <= |a|}`` (0..81), the bin of activation ``a`` is
``ZERO + sign(a) · r(|a|)`` (:data:`ZERO` = 81, :data:`N_BINS` = 163 bins, 0-based, ascending
in ``a``): a positive bin is ``[e_{r-1}, e_r)``, its negative mirror ``(-e_r, -e_{r-1}]``.
Every bin's width is 1/8 to 1/4 of its values, so the scheme resolves GELU's small negative
lobe (down to about -0.17), SiLU's, and a positive tail spanning six orders of magnitude alike,
and needs neither a first pass nor the model's activation function.

Every edge is a float32 whose bit pattern ends in 21 zero bits, so the bin of a float32 (or
bfloat16) activation is read off the top 11 bits of its pattern (sign, exponent, two mantissa
bits): exactly the bin of the comparisons above (:func:`bin_of` is that definition, the tests
check the two agree on every edge and its neighbours).

**Counting** is the scan's extension point (a) (:mod:`precompute.model.backend`): a
:class:`Histograms` is passed as ``observe`` to :func:`precompute.prompts.scan.scan` and sees every
batch's ``hook_post`` of each analysed layer with the real positions (after BOS, not padding).
Memory is ``N_BINS × d_mlp`` integers per layer, whatever the corpus; counts are integers, so
shards (Ray) merge exactly in any order (:meth:`Histograms.merge`). On the CPU one compiled
pass (numba) reads each activation once (about 1 ns each); on other devices the same keys are
counted by ``torch.bincount``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

BINS_PER_OCTAVE = 4
LOW_EXP, HIGH_EXP = -10, 10  # |a| < 2^LOW_EXP: the central bin; |a| >= 2^HIGH_EXP: under/overflow
N_MAG = (HIGH_EXP - LOW_EXP) * BINS_PER_OCTAVE  # 80 bins per side between the two
ZERO = N_MAG + 1  # index of the central bin
N_BINS = 2 * ZERO + 1  # 163
SCHEME = f"log2/{BINS_PER_OCTAVE}:{LOW_EXP}:{HIGH_EXP}"  # stored with every histogram row

_SHIFT = {torch.float32: 21, torch.bfloat16: 5}  # bits below the 11-bit key of the pattern
_KEY0 = 4 * (127 + LOW_EXP) - 1  # key (exponent * 4 + 2 mantissa bits) just below e_0


def magnitude_edges() -> list[float]:
    """``e_0 .. e_80`` (ascending, exact in float32): the edges of the bins of ``|a|``."""
    return [2.0 ** (LOW_EXP + j // BINS_PER_OCTAVE) * (1 + (j % BINS_PER_OCTAVE) / BINS_PER_OCTAVE)
            for j in range(N_MAG)] + [2.0 ** HIGH_EXP]


def bin_bounds(i: int) -> tuple[float, float]:
    """The values bin ``i`` (0-based) holds, ``(lo, hi)``: ``[lo, hi)`` above the central bin,
    ``(lo, hi]`` below it, ``(lo, hi)`` for the central bin; ``-inf``/``inf`` for the outer
    bins.

    Raises:
        ValueError: ``i`` outside ``0 .. N_BINS - 1``.
    """
    if not 0 <= i < N_BINS:
        raise ValueError(f"bin {i} out of range 0..{N_BINS - 1}")
    e = magnitude_edges()
    r = i - ZERO
    if r == 0:
        return -e[0], e[0]
    lo = e[abs(r) - 1]
    hi = e[abs(r)] if abs(r) <= N_MAG else float("inf")
    return (lo, hi) if r > 0 else (-hi, -lo)


def bin_of(values) -> np.ndarray:
    """The bin (0-based) of each activation by the definition (comparisons with the edges;
    float32 values). The reference the counting passes are tested against."""
    a = np.asarray(values, dtype=np.float32)
    r = np.searchsorted(np.asarray(magnitude_edges(), dtype=np.float32), np.abs(a), side="right")
    r = np.where(np.isnan(a), N_MAG + 1, r)  # NaN: with the outer bins (never in a real scan)
    return (ZERO + np.where(np.signbit(a), -r, r)).astype(np.int64)


def _key_bins() -> np.ndarray:
    """The bin of each 11-bit key ``(pattern >> 21) + 1024`` (0..2047) of a float32: keys below
    1024 are negative values, ``key % 1024 = exponent * 4 + top two mantissa bits``."""
    k = np.arange(2048)
    r = np.clip(k % 1024 - _KEY0, 0, ZERO)
    return np.where(k < 1024, ZERO - r, ZERO + r).astype(np.int64)


KEY_BINS = _key_bins()




def count_batch(post: Float[Tensor, "batch pos d_mlp"], real: Bool[Tensor, "batch pos"], *,
                use_numba: bool | None = None) -> Int[Tensor, "n_bins d_mlp"]:
    """Counts of one batch of one layer: ``counts[k, i]`` = the real positions whose
    ``hook_post[..., i]`` lies in bin ``k`` (int64, CPU). ``use_numba``: the compiled CPU pass
    (default on CPU tensors) or ``torch.bincount`` (any device); both count the same keys."""
    if post.dtype not in _SHIFT:
        post = post.float()
    post = post.contiguous()
    shift = _SHIFT[post.dtype]
    bits = post.view(torch.int32 if post.dtype == torch.float32 else torch.int16)
    if use_numba is None:
        use_numba = post.device.type == "cpu"
    d_mlp = post.shape[-1]
    if use_numba:
        n_real = int(real.sum())
        counts = np.zeros((N_BINS, d_mlp), dtype=np.uint16 if n_real < 1 << 16 else np.int64)
        from context_lookups.precompute.prompts.histogram_pass import count_keys

        count_keys(bits.numpy(), real.cpu().numpy(), shift, KEY_BINS, counts)
        return torch.from_numpy(counts.astype(np.int64, copy=False))
    # count (key, neuron) pairs, then add the 2048 keys' rows into their bins
    dev = post.device
    cols = torch.arange(d_mlp, dtype=torch.int32, device=dev) + 1024 * d_mlp
    idx = (bits[real].to(torch.int32) >> shift) * d_mlp + cols  # [n_real, d_mlp], key-major
    per_key = torch.bincount(idx.flatten(), minlength=2048 * d_mlp).view(2048, d_mlp)
    bins = torch.zeros(N_BINS, d_mlp, dtype=torch.int64, device=dev)
    return bins.index_add_(0, torch.as_tensor(KEY_BINS, device=dev), per_key).cpu()


class Histograms:
    """The running histograms of a scan: ``counts[layer]`` ``[N_BINS, d_mlp]`` int64 (bin-major),
    for each of ``layers``. Pass it as the scan's ``observe``; :meth:`merge` adds another shard's
    counts (exact in any order); :meth:`rows` gives one neuron's counts."""

    def __init__(self, layers: Sequence[int], d_mlp: int, *, use_numba: bool | None = None):
        self.layers = [int(x) for x in layers]
        self.d_mlp = d_mlp
        self.use_numba = use_numba
        self.counts = {layer: torch.zeros(N_BINS, d_mlp, dtype=torch.int64) for layer in self.layers}

    def __call__(self, layer: int, post: Float[Tensor, "batch pos d_mlp"],
                 real: Bool[Tensor, "batch pos"]) -> None:
        """Add one batch of ``layer``'s ``hook_post`` at its ``real`` positions (the observer of
        extension point (a))."""
        if layer in self.counts:
            self.counts[layer] += count_batch(post.detach(), real, use_numba=self.use_numba)

    def merge(self, other: Histograms) -> Histograms:
        """Add ``other``'s counts (another shard of the same split and layers); returns self.

        Raises:
            ValueError: other layers or d_mlp.
        """
        if (other.layers, other.d_mlp) != (self.layers, self.d_mlp):
            raise ValueError("Only histograms of the same layers and d_mlp can be merged.")
        for layer in self.layers:
            self.counts[layer] += other.counts[layer]
        return self

    def n_tokens(self) -> int:
        """Tokens counted (each neuron counts every one; 0 before any batch)."""
        return int(self.counts[self.layers[0]][:, 0].sum()) if self.layers else 0

    def rows(self, layer: int) -> list[tuple[int, list[int]]]:
        """Per neuron of ``layer`` (in order), its counts trimmed to the occupied bins:
        ``(first, counts)`` with ``counts[j]`` the count of bin ``first + j`` (first and last
        non-zero); ``(0, [])`` for a neuron that counted nothing."""
        c = self.counts[layer].T.contiguous()  # [d_mlp, N_BINS]
        nz = c > 0
        any_ = nz.any(1).tolist()
        first = nz.int().argmax(1).tolist()
        last = (N_BINS - 1 - nz.flip(1).int().argmax(1)).tolist()
        vals = c.tolist()
        return [(f, v[f:e + 1]) if a else (0, []) for f, e, v, a in zip(first, last, vals, any_, strict=True)]
