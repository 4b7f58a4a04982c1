"""Bounds on the command line's values that no config class sets, checked once after parsing
(before anything is loaded or written), and the error line's form.

A value far outside what a run can do (a seed that numpy cannot take, a fitness stage of
10^11 tokens) is refused here in one line instead of failing deep in a run, or running out of
memory there.
"""

from __future__ import annotations

from typing import Any, Mapping

from sparsearch.base.errors import ConfigError

SEED_MAX = 2**32 - 1  # numpy's and Optuna's seeds are 32-bit
MAX_STAGES = 16
MAX_STAGE_TOKENS = 2**24  # fitness tokens of one stage (Týr's largest preset stage: 2**17)
MAX_TRAIN_TOKENS = 2**30  # training tokens of one training-aware stage
MAX_SURVIVORS = 2**16
MAX_MULTIPLE = 1024  # --fitness-pool and --validation, in multiples of the last stage's tokens
MAX_ERROR_CHARS = 500  # one error line, at most


def check_values(values: Mapping[str, Any]) -> None:
    """Refuse a seed outside [0, 2**32 - 1] and a token schedule or pool beyond the bounds above
    (``values``: an option's destination name to its resolved value)."""
    seed = values.get("seed")
    if seed is not None and not (isinstance(seed, int) and 0 <= seed <= SEED_MAX):
        raise ConfigError(f"--seed must be within [0, {SEED_MAX}], got {seed!r}")
    schedule = values.get("schedule")
    if isinstance(schedule, str):
        from sparsearch.fitness.schedule import TokenSchedule

        try:
            stages = TokenSchedule.parse(schedule).stages
        except ValueError as e:
            raise ConfigError(f"schedule: {e}") from None
        if len(stages) > MAX_STAGES:
            raise ConfigError(f"--schedule has at most {MAX_STAGES} stages, got {len(stages)}")
        for s in stages:
            for what, value, most in (("survivors", s.survivors, MAX_SURVIVORS), ("tokens", s.tokens, MAX_STAGE_TOKENS),
                                      ("train_tokens", s.train_tokens, MAX_TRAIN_TOKENS)):
                if value > most:
                    raise ConfigError(f"--schedule: a stage's {what} must be at most {most}, got {value}")
    for dest, flag in (("fitness_pool", "--fitness-pool"), ("validation", "--validation")):
        value = values.get(dest)
        if isinstance(value, int) and value > MAX_MULTIPLE:
            raise ConfigError(f"{flag} must be at most {MAX_MULTIPLE}, got {value}")


def probe_storage(values: Mapping[str, Any]) -> None:
    """With ``--engine tpe --storage URL``: the URL's database driver imported and one
    connection made (one line, password masked, before the model loads)."""
    if values.get("engine") == "tpe" and values.get("storage"):
        from sparsearch.search.tpe import probe_storage as probe

        probe(values["storage"])


def error_line(message: object) -> str:
    """``message`` as one line of at most :data:`MAX_ERROR_CHARS` characters."""
    text = " ".join(str(message).split()) or "error"
    if len(text) > MAX_ERROR_CHARS:
        text = text[: MAX_ERROR_CHARS - 3] + "..."
    return text
