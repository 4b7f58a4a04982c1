"""Token schedules for staged selection: later stages keep fewer candidates and spend more tokens.

A stage is ``(survivors, tokens, train_tokens)``: every candidate entering it is (optionally) trained
on ``train_tokens`` tokens, scored on ``tokens`` fitness tokens, and the best ``survivors`` go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Stage:
    survivors: int
    tokens: int
    train_tokens: int = 0

    def __post_init__(self) -> None:
        if self.survivors < 1 or self.tokens < 1 or self.train_tokens < 0:
            raise ValueError(f"a stage needs survivors >= 1, tokens >= 1, train_tokens >= 0; got {self}")


@dataclass(frozen=True)
class TokenSchedule:
    """Stages in order. Each later stage scores on more tokens, keeps no more survivors, and trains
    on no fewer tokens than the one before it."""

    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        stages = tuple(s if isinstance(s, Stage) else Stage(*s) for s in self.stages)
        object.__setattr__(self, "stages", stages)
        if not stages:
            raise ValueError("a token schedule needs at least one stage")
        for a, b in zip(stages, stages[1:]):
            if b.tokens <= a.tokens:
                raise ValueError(f"fitness tokens must grow from stage to stage: {a.tokens} then {b.tokens}")
            if b.survivors > a.survivors:
                raise ValueError(f"survivors must not grow from stage to stage: {a.survivors} then {b.survivors}")
            if b.train_tokens < a.train_tokens:
                raise ValueError(f"training tokens must not shrink: {a.train_tokens} then {b.train_tokens}")

    @classmethod
    def of(cls, stages: Iterable[Sequence[int]]) -> "TokenSchedule":
        return cls(tuple(Stage(*s) for s in stages))

    @classmethod
    def parse(cls, text: str) -> "TokenSchedule":
        """A preset name, or ``"8:1024,4:2048,1:8192"`` (``survivors:tokens[:train_tokens]``)."""
        if text in PRESETS:
            return PRESETS[text]
        try:
            return cls.of(tuple(int(x) for x in part.split(":")) for part in text.split(","))
        except (TypeError, ValueError) as e:
            raise ValueError(f"bad token schedule {text!r}: {e}") from None

    @property
    def max_tokens(self) -> int:
        return self.stages[-1].tokens

    def __len__(self) -> int:
        return len(self.stages)


PRESETS = {
    # DarwinLM / EvoPress multi-step selection: 8 -> 4 -> 2 -> 1 on 1K / 2K / 4K / 8K tokens
    "darwinlm": TokenSchedule.of([(8, 1024), (4, 2048), (2, 4096), (1, 8192)]),
    # DarwinLM training-aware selection: the same stages, each survivor first trained briefly
    "darwinlm-train": TokenSchedule.of([(8, 1024, 10_000), (4, 2048, 50_000), (2, 4096, 100_000), (1, 8192, 200_000)]),
    # Týr-the-Pruner: 16 -> 4 -> 1 on 2K / 16K / 128K tokens
    "tyr": TokenSchedule.of([(16, 2048), (4, 16384), (1, 131072)]),
}
