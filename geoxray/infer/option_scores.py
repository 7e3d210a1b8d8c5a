"""Exact option probabilities from next-token log-probabilities over a trie of the options.

P(option) is the model's probability that its whole reply is the option: the product of the
probabilities of the option's tokens and then of ending the reply (any stop token), i.e.
    log P(o) = sum_i log p(t_i | prompt, t_<i) + log sum_{s in stop} p(s | prompt, o).
The end term makes options that prefix others ("top" vs "top left") exclusive events. The
probabilities are renormalised over the task's options; the mass they had before that
(`mass`) says how much the model wanted to answer with an option at all.

Each distinct proper prefix of the options' token sequences is one trie node, scored by one
engine request (prompt + prefix, one step, log-probs of exactly the node's children). All
nodes share the prompt, so with prefix caching only the few prefix tokens are recomputed.
Single-token options with distinct tokens (N/E/S/W) cost 1 + K requests of one token each.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

END = -1  # a virtual child token: the reply ends here (any stop token)
Prefix = tuple[int, ...]


@dataclass(frozen=True)
class OptionTrie:
    sequences: dict[str, Prefix]  # option -> its token ids followed by END
    children: dict[Prefix, tuple[int, ...]]  # node (proper prefix) -> next tokens (END too)

    def token_ids_to_score(self, node: Prefix, stop_ids: tuple[int, ...]) -> list[int]:
        """The real token ids whose log-probs node `node` must return."""
        ids: list[int] = []
        for t in self.children[node]:
            ids.extend(stop_ids if t == END else (t,))
        return sorted(set(ids))


def build_trie(option_tokens: dict[str, list[int]]) -> OptionTrie:
    sequences: dict[str, Prefix] = {}
    children: dict[Prefix, list[int]] = {}
    for option, ids in option_tokens.items():
        if not ids:
            raise ValueError(f"option {option!r} has no tokens")
        seq = tuple(ids) + (END,)
        if seq in sequences.values():
            raise ValueError(f"option {option!r} tokenizes like another option")
        sequences[option] = seq
        for i in range(len(seq)):
            kids = children.setdefault(seq[:i], [])
            if seq[i] not in kids:
                kids.append(seq[i])
    return OptionTrie(sequences, {k: tuple(v) for k, v in children.items()})


def _logsumexp(values: list[float]) -> float:
    m = max(values)
    if m == -math.inf:
        return -math.inf
    return m + math.log(sum(math.exp(v - m) for v in values))


def option_logprobs(trie: OptionTrie, node_logprobs: dict[Prefix, dict[int, float]],
                    stop_ids: tuple[int, ...]) -> dict[str, float]:
    """log P(option) (unnormalised over options) from each node's token log-probs."""
    out: dict[str, float] = {}
    for option, seq in trie.sequences.items():
        total = 0.0
        for i, tok in enumerate(seq):
            scores = node_logprobs[seq[:i]]
            if tok == END:
                total += _logsumexp([scores.get(s, -math.inf) for s in stop_ids])
            else:
                total += scores.get(tok, -math.inf)
        out[option] = total
    return out


def normalise(logprobs: dict[str, float]) -> tuple[dict[str, float], float]:
    """(P(option | the reply is an option), total probability of the options)."""
    norm = _logsumexp(list(logprobs.values()))
    if norm == -math.inf:
        raise ValueError("every option has probability 0")
    return {o: math.exp(lp - norm) for o, lp in logprobs.items()}, math.exp(norm)
