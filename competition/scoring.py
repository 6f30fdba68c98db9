"""Scoring a submission file against a solution file, as Kaggle's leaderboard did."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from competition.errors import RLEError, UserError
from competition.metric import ErrorCounts, ScoreResult, score_image_and_errors
from competition.solution import read_solution
from competition.submission import Problem, validate_submission


class InvalidSubmission(UserError):
    """The submission breaks the format; ``problems`` lists every problem found."""

    def __init__(self, path: Path, problems: list[Problem]):
        self.problems = problems
        super().__init__(f"{path} is not a valid submission: {len(problems)} problem(s), first: {problems[0]}")


@dataclass(frozen=True)
class SubmissionScore:
    """The result of scoring one submission.

    Attributes:
        result: per-image scores of the scored (non-``Ignored``) images.
        usage: ImageId -> Usage of the scored images.
        types: ImageId -> image type, when known (else empty).
        errors: ImageId -> where the image's score is lost at IoU 0.5
            (:func:`competition.metric.error_counts`).
    """

    result: ScoreResult
    usage: dict[str, str]
    types: dict[str, str]
    errors: dict[str, ErrorCounts] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return self.result.score

    def groups(self) -> dict[str, float]:
        """Scores per Usage (lower case) and per image type."""
        out = {u.lower(): s for u, s in self.result.by_group(self.usage).items()}
        if self.types:
            out.update(self.result.by_group(self.types))
        return out

    def errors_by_group(self) -> dict[str, ErrorCounts]:
        """The error counts summed per image type (all images under ``"all"`` without
        types), sorted by group."""
        groups = self.types or {i: "all" for i in self.errors}
        out: dict[str, ErrorCounts] = {}
        for image_id, counts in self.errors.items():
            group = groups.get(image_id, "unknown")
            out[group] = out.get(group, ErrorCounts()) + counts
        return dict(sorted(out.items()))


def score_submission(
    submission: str | Path,
    solution: str | Path,
    types: Mapping[str, str] | None = None,
) -> SubmissionScore:
    """Validate ``submission`` against ``solution`` and score it.

    Every ImageId of the solution, ``Ignored`` ones included, must be in the submission (as
    Kaggle required); ``Ignored`` images are not scored.

    Raises:
        InvalidSubmission: the submission breaks the format (all problems listed).
        DataError: the solution file is unreadable or invalid.
    """
    truth = read_solution(solution)
    shapes = {i: s.shape for i, s in truth.items()}
    sub, problems = validate_submission(submission, required_ids=list(truth), shapes=shapes)
    if problems:
        raise InvalidSubmission(Path(submission), problems)
    scores, errors = [], {}
    for image_id, true_image in truth.items():
        if true_image.usage == "Ignored":
            continue
        try:
            pred = sub.label(image_id, true_image.shape)
        except RLEError as exc:  # validated above; kept so a bug cannot pass silently
            raise InvalidSubmission(Path(submission), [Problem(image_id, str(exc))]) from None
        score, errors[image_id] = score_image_and_errors(true_image.label(), pred, image_id)
        scores.append(score)
    result = ScoreResult(tuple(scores))
    usage = {s.image_id: truth[s.image_id].usage for s in scores}
    known_types = {i: t for i, t in (types or {}).items() if i in usage}
    return SubmissionScore(result, usage, known_types, errors)


def format_report(scored: SubmissionScore, *, worst: int = 5) -> list[str]:
    """Lines for the terminal: per Usage, per type, per threshold, the errors at IoU 0.5 per
    type (:func:`competition.metric.error_counts`), interval, the worst images, the score.

    The last line is ``score 0.xxxx``.
    """
    result = scored.result
    low, high = result.bootstrap_interval()
    lines = [f"images scored {len(result.images)}"]
    for usage, value in result.by_group(scored.usage).items():
        n = sum(1 for u in scored.usage.values() if u == usage)
        lines.append(f"usage {usage:<12} {value:.4f}  (n={n})")
    if scored.types:
        for kind, value in result.by_group(scored.types).items():
            n = sum(1 for t in scored.types.values() if t == kind)
            lines.append(f"type  {kind:<12} {value:.4f}  (n={n})")
    thresholds = " ".join(f"{v:.3f}" for v in result.per_threshold)
    lines.append(f"per threshold 0.50..0.95: {thresholds}")
    for kind, counts in scored.errors_by_group().items():
        lines.append(f"errors at IoU 0.5, {kind}: {counts.describe()}")
    lines.append(f"95% bootstrap interval over images: [{low:.4f}, {high:.4f}]")
    for s in sorted(result.images, key=lambda s: s.score)[:worst]:
        lines.append(f"worst {s.image_id} {s.score:.4f} (true {s.n_true}, predicted {s.n_pred})")
    lines.append(f"score {result.score:.4f}")
    return lines
