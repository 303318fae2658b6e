"""LoCoMo scoring, implemented once: the official scorer plus the F1 / BLEU-1 the Mem0 and Memory-R1 papers report.

Category numbers as they are in locomo10.json: 1 multi-hop, 2 temporal, 3 open-domain,
4 single-hop, 5 adversarial (several public forks get this mapping wrong). The stemmer and BLEU-1
are NLTK's: `pip install 'memr1[bench]'`.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}
_ARTICLES = re.compile(r"\b(a|an|the|and)\b")
_PUNCT = set(string.punctuation)


@lru_cache(maxsize=1)
def _stemmer():
    try:
        from nltk.stem import PorterStemmer  # the official scorer stems with NLTK's Porter stemmer
    except ImportError as e:
        raise ImportError(f"{e}: LoCoMo scoring needs NLTK, pip install 'memr1[bench]'") from e

    return PorterStemmer()


def normalize(text: str) -> str:
    """The official normalisation: drop commas, lower-case, strip punctuation and articles, squeeze spaces."""
    text = str(text).replace(",", "").lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _tokens(text: str) -> list[str]:
    stem = _stemmer().stem
    return [stem(w) for w in normalize(text).split()]


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = _tokens(prediction), _tokens(gold)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def multi_hop_f1(prediction: str, gold: str) -> float:
    """Category 1: each comma-separated gold part scores its best-matching predicted part; the mean is taken."""
    preds = [p.strip() for p in str(prediction).split(",")]
    golds = [g.strip() for g in str(gold).split(",")]
    return sum(max(token_f1(p, g) for p in preds) for g in golds) / len(golds)


def adversarial_correct(prediction: str) -> float:
    """Category 5: right when the prediction says the information is not there."""
    text = str(prediction).lower()
    return 1.0 if ("no information available" in text or "not mentioned" in text) else 0.0


def locomo_f1(prediction: str, gold: object, category: int) -> float:
    """The official LoCoMo per-question score."""
    if category == 5:
        return adversarial_correct(prediction)
    gold = str(gold)
    if category == 3:
        gold = gold.split(";")[0].strip()
    if category == 1:
        return multi_hop_f1(prediction, gold)
    return token_f1(prediction, gold)


def bleu1(prediction: str, gold: object) -> float:
    """Unigram BLEU with smoothing, on normalised whitespace tokens (as in the Mem0 paper's evaluation)."""
    try:
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    except ImportError as e:
        raise ImportError(f"{e}: BLEU-1 needs NLTK, pip install 'memr1[bench]'") from e

    pred, ref = normalize(prediction).split(), normalize(str(gold)).split()
    if not pred or not ref:
        return 0.0
    return float(sentence_bleu([ref], pred, weights=(1, 0, 0, 0), smoothing_function=SmoothingFunction().method1))


def exact_match(prediction: str, gold: object) -> float:
    """Memory-R1's training reward: equality after normalisation."""
    return float(normalize(prediction) == normalize(str(gold)))


def paired_difference(
    after: list[float], before: list[float], *, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of after - before over the same questions, and its 95% bootstrap interval (questions resampled)."""
    import random

    if len(after) != len(before) or not after:
        raise ValueError(f"paired scores need the same non-zero count, not {len(after)} and {len(before)}")
    diffs = [a - b for a, b in zip(after, before, strict=True)]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(rng.choices(diffs, k=n)) / n for _ in range(resamples))
    return sum(diffs) / n, means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]
