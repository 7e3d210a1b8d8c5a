"""Prior-corrected (debiased) scores from option probabilities, after PriDe (Zheng et al.,
"Large Language Models Are Not Robust Multiple Choice Selectors", arXiv 2309.03882).

Model: the observed probability of option label d on item x factors into a prior over labels
and a content term, P_obs(d | x) = pi(d) f_x(content at d) / Z_x. PriDe estimates pi from a
small subset of items asked under several permutations of their options: averaged over a
set of permutations that moves every content to every label equally often (a Latin square,
e.g. the K cyclic shifts), the log content term is the same for every label, so

    pi_x(d) = softmax_d( mean_v log P_obs(d | x under permutation v) ),
    pi(d)   = mean over the estimation items of pi_x(d),

and every other item is debiased by P_deb(d | x) proportional to P_obs(d | x) / pi(d); its
prediction is the argmax. On GeoX-Bench the labels of most tasks are fixed (N/E/S/W, the
nine crop names, true/false), so the permutations come from geometry, not from reordering
text: rotating the satellite tile by 90 degrees (without saying so) moves the content that
answered N to E, and so on (a cyclic shift of the 4 direction labels); rotating the order of
the cross-map candidates shifts the indices 0..3. pi is then the prior over option LABELS
(which label the model likes to say whatever the image shows). Where the variants do not move
every label to every other (true/false under rotation, the centre crop under rotation), pi
is not identifiable this way and `pride_prior` refuses.

Pure numpy; the permutation of a variant is given as `perm[v][j]` = the label index at which
the content of the original label j appears in variant v (the gold moves the same way).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from geoxray.score.metrics import prob_vector

_FLOOR = 1e-12  # probabilities are floored before logs: an exact 0 would make the mean -inf


def check_latin(perms: np.ndarray) -> None:
    """Raise ValueError unless, for every label d, the original labels whose content lands on
    d (over the variants) cover all K labels equally often."""
    perms = np.asarray(perms, dtype=np.int64)
    V, K = perms.shape
    if sorted(map(tuple, np.sort(perms, axis=1))) != [tuple(range(K))] * V:
        raise ValueError("every variant must be a permutation of the K labels")
    counts = np.zeros((K, K), dtype=np.int64)  # counts[d, j]: content j lands on label d
    for v in range(V):
        counts[perms[v], np.arange(K)] += 1
    if not np.all(counts == counts[0, 0]) or V % K:
        raise ValueError("the variants do not move every option's content to every label "
                         "equally often; the prior over labels is not identifiable from them")


def pride_prior(probs: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """The prior over labels from estimation items asked under every variant.

    probs: (n, V, K) observed probabilities (rows renormalised here), item i under variant v.
    perms: (V, K) the variants' label permutations (see the module doc); must be Latin."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3 or probs.shape[0] == 0:
        raise ValueError(f"probs must be (items, variants, K) with items > 0, got "
                         f"{probs.shape}")
    check_latin(perms)
    if probs.shape[1:] != np.asarray(perms).shape:
        raise ValueError(f"probs {probs.shape[1:]} and perms {np.shape(perms)} disagree")
    probs = probs / probs.sum(axis=2, keepdims=True)
    mean_log = np.log(np.maximum(probs, _FLOOR)).mean(axis=1)  # (n, K)
    per_item = np.exp(mean_log - mean_log.max(axis=1, keepdims=True))
    per_item /= per_item.sum(axis=1, keepdims=True)
    return per_item.mean(axis=0)


def debias(probs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """P_deb proportional to P_obs / prior, rows renormalised."""
    probs = np.asarray(probs, dtype=np.float64)
    out = probs / np.maximum(np.asarray(prior, dtype=np.float64), _FLOOR)
    return out / out.sum(axis=-1, keepdims=True)


def debiased_predictions(option_probs: Sequence[Any], options: Sequence[str],
                         prior: np.ndarray) -> list[str | None]:
    """The argmax option after removing `prior`, per item; None where the item has no
    usable probabilities (`metrics.prob_vector`). Ties go to the first option."""
    out: list[str | None] = []
    for probs in option_probs:
        vec = prob_vector(probs, options)
        out.append(None if vec is None else options[int(np.argmax(debias(vec, prior)))])
    return out


def raw_predictions(option_probs: Sequence[Any], options: Sequence[str]) -> list[str | None]:
    """The argmax option of the observed probabilities (the comparison for debiasing)."""
    return debiased_predictions(option_probs, options, np.ones(len(options)))


def prior_entropy(prior: np.ndarray) -> float:
    """Normalised entropy of the estimated prior (1: no label preference)."""
    p = np.asarray(prior, dtype=np.float64)
    nz = p[p > 0]
    return float(-(nz * np.log(nz)).sum() / math.log(p.size))
