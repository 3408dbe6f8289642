"""ShapeVQA accuracy: exact match after normalisation, per question family and overall (research/eval.md §10.7).

Data flow: questions (star.shapes.text.vqa_questions: {question, answer, family}) + model answers ─▶ normalise both
─▶ exact match ─▶ accuracy per family and overall (overall = over all questions; family_mean = mean of families).
"""

from __future__ import annotations

from collections import Counter

import json
import os
import re

NUMBER_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
                "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}
ARTICLES = {"a", "an", "the"}
_PUNCT = re.compile(r"[^\w\s]")


def normalize(answer) -> str:
    """Lower case, punctuation removed, articles dropped, number words as digits, whitespace collapsed."""
    words = _PUNCT.sub(" ", str(answer).lower()).split()
    return " ".join(str(NUMBER_WORDS.get(w, w)) for w in words if w not in ARTICLES)


def is_correct(prediction, answer) -> bool:
    return normalize(prediction) == normalize(answer)


def accuracy(questions: list[dict], predictions: list) -> dict:
    """Accuracy of `predictions` (one answer per question, same order) against questions' "answer".

    Returns {"overall", "family_mean", "families": {family: accuracy}, "counts": {family: [correct, total]}, "n"}.
    """
    if len(questions) != len(predictions):
        raise ValueError(f"got {len(predictions)} predictions for {len(questions)} questions")
    counts: dict[str, list[int]] = {}
    for q, p in zip(questions, predictions):
        c = counts.setdefault(q.get("family", "all"), [0, 0])
        c[0] += int(is_correct(p, q["answer"]))
        c[1] += 1
    families = {f: c[0] / c[1] for f, c in counts.items()}
    total = sum(c[1] for c in counts.values())
    return {
        "overall": sum(c[0] for c in counts.values()) / total if total else None,
        "family_mean": sum(families.values()) / len(families) if families else None,
        "families": families,
        "counts": counts,
        "n": total,
    }


def blind_answers(questions: list[dict]) -> list[str]:
    """The answer a model that never looks at the image would give: each family's most common answer (ties: the
    first met). Scored with `accuracy`, it is the chance level of the question set."""
    seen: dict[str, Counter] = {}
    for q in questions:
        seen.setdefault(q.get("family", "all"), Counter())[normalize(q["answer"])] += 1
    common = {family: answers.most_common(1)[0][0] for family, answers in seen.items()}
    return [common[q.get("family", "all")] for q in questions]


def _read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"malformed JSON on line {i} of {path}: {exc}") from exc
    return rows


def score_files(questions_path: str | os.PathLike, predictions_path: str | os.PathLike) -> dict:
    """Questions JSONL (`star shapes prompts --suite vqa`: rows with "id", "answer", "family") and predictions JSONL
    (rows {"id", "answer"}); every question needs a prediction (a missing one is an error naming the ids)."""
    questions = _read_jsonl(questions_path)
    preds = {}
    for row in _read_jsonl(predictions_path):
        if "id" not in row or "answer" not in row:
            raise ValueError(f"prediction rows need 'id' and 'answer', got {row} in {predictions_path}")
        preds[row["id"]] = row["answer"]
    ids = [q.get("id", i) for i, q in enumerate(questions)]
    missing = [i for i in ids if i not in preds]
    if missing:
        raise ValueError(f"{len(missing)} questions have no prediction in {predictions_path} "
                         f"(first ids: {missing[:5]})")
    return accuracy(questions, [preds[i] for i in ids])


__all__ = ["normalize", "is_correct", "accuracy", "score_files"]
