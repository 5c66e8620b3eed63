"""Which training examples repeat an evaluation case's input, exactly or nearly. Pure.

A model trained on a test case's input scores well on it for the wrong reason. Inputs are
compared as normalised text (Unicode NFKC, case-folded, every run of non-alphanumeric characters
one space): the same text is an ``exact`` duplicate; otherwise a ``near`` duplicate is one whose
estimated Jaccard similarity of character 5-gram shingles reaches ``NEAR_JACCARD`` (MinHash with
128 permutations and LSH banding, datasketch's ``MinHashLSH``, Broder 1997; Leskovec, Rajaraman
& Ullman, "Mining of Massive Datasets", ch. 3). "My order #1234 never arrived!!" is an exact
duplicate of "my order 1234 never arrived"; "The app crashes every time I upload a photo of my
receipt" and the same with "receipts." are near (0.95); "The invoice for March is wrong, I was
charged twice" and the same for April are not (0.64): short texts that differ in a word stay
apart.

LSH misses a pair at the threshold with a small probability and may propose a pair below it;
candidates are checked against the MinHash estimate, so the error left is the estimate's
(standard error about 0.04 at 128 permutations).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from enum import StrEnum

from datasketch import MinHash, MinHashLSH

NEAR_JACCARD = 0.8
PERMUTATIONS = 128
# LSH bands and rows: datasketch's optimum for NEAR_JACCARD at PERMUTATIONS (it takes 15 ms of
# numerical integration to find them, at every index built).
BANDS_ROWS = (9, 13)
SHINGLE = 5
_NOT_WORD = re.compile(r"[\W_]+")


class Leak(StrEnum):
    EXACT = "exact"
    NEAR = "near"


def normalised(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold()
    return _NOT_WORD.sub(" ", folded).strip()


def _minhash(text: str) -> MinHash:
    signature = MinHash(num_perm=PERMUTATIONS, seed=1)
    padded = f" {text} "
    grams = {padded[i : i + SHINGLE] for i in range(max(1, len(padded) - SHINGLE + 1))}
    signature.update_batch([gram.encode() for gram in sorted(grams)])
    return signature


class HeldOut:
    """The inputs of a route's evaluation cases, to check training examples against."""

    def __init__(self, prompts: Iterable[str]) -> None:
        self._exact: set[str] = set()
        self._lsh = MinHashLSH(num_perm=PERMUTATIONS, params=BANDS_ROWS)
        self._signatures: dict[str, MinHash] = {}
        for prompt in prompts:
            text = normalised(prompt)
            if text in self._exact:
                continue
            self._exact.add(text)
            signature = _minhash(text)
            key = str(len(self._signatures))
            self._signatures[key] = signature
            self._lsh.insert(key, signature)

    def __len__(self) -> int:
        return len(self._exact)

    def leak(self, prompt: str) -> Leak | None:
        """``exact`` or ``near`` when ``prompt`` repeats a held-out input, else ``None``."""
        if not self._exact:
            return None
        text = normalised(prompt)
        if text in self._exact:
            return Leak.EXACT
        signature = _minhash(text)
        for key in self._lsh.query(signature):
            if signature.jaccard(self._signatures[key]) >= NEAR_JACCARD:
                return Leak.NEAR
        return None
