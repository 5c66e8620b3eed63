"""The calibration figures of the reviewer API's stats (``GET /v1/reviews/stats``)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.review.calibration import Bin, Calibration
from service.review.calibration_reads import VersionCalibration


class BinOut(BaseModel):
    low: float = Field(description="The bin's lowest confidence (inclusive).")
    high: float = Field(description="Its highest (exclusive; the last bin includes 1).")
    count: int = Field(description="Reviewed answers (or fields) whose confidence fell in it.")
    mean_confidence: float | None = Field(description="Their mean confidence (null: empty).")
    accuracy: float | None = Field(description="The share reviewers kept (null: empty).")

    @classmethod
    def of(cls, b: Bin) -> BinOut:
        return cls(
            low=b.low, high=b.high, count=b.count, mean_confidence=b.mean_confidence,
            accuracy=b.accuracy,
        )  # fmt: skip


class CalibrationOut(BaseModel):
    n: int = Field(description="Reviewed answers (or fields) with a confidence.")
    accuracy: float = Field(description="The share reviewers kept as they were.")
    mean_confidence: float = Field(description="Their mean confidence.")
    ece: float = Field(
        description="Expected calibration error: the count-weighted mean over the bins of "
        "|accuracy - mean confidence| (0 is perfectly calibrated; with few items per bin it "
        "reads high by chance)."
    )
    brier: float = Field(description="Mean of (confidence - kept)^2, kept being 1 or 0.")
    bins: list[BinOut] = Field(description="The reliability diagram: ten equal-width bins.")

    @classmethod
    def of(cls, figures: Calibration) -> CalibrationOut:
        return cls(
            n=figures.n, accuracy=figures.accuracy, mean_confidence=figures.mean_confidence,
            ece=figures.ece, brier=figures.brier, bins=[BinOut.of(b) for b in figures.bins],
        )  # fmt: skip


class VersionCalibrationOut(BaseModel):
    route: str = Field(description="The route.")
    target: str = Field(description="The adapter version (or model) that answered.")
    answers: CalibrationOut = Field(
        description="Per answer: its confidence against the decision (approved: right; "
        "corrected or rejected: wrong)."
    )
    fields: CalibrationOut | None = Field(
        description="Per scored field of approved and corrected answers: a field the "
        "reviewer changed was wrong, one left alike right (null: no field scores)."
    )

    @classmethod
    def of(cls, version: VersionCalibration) -> VersionCalibrationOut:
        fields = CalibrationOut.of(version.fields) if version.fields is not None else None
        return cls(
            route=version.route, target=version.target,
            answers=CalibrationOut.of(version.answers), fields=fields,
        )  # fmt: skip
