"""One command's configuration: :class:`RunConfig`, built once from its flags and preset
(:func:`run_config`) and passed to the command and the run's steps (:mod:`sparsearch.launch.pipeline`).

It holds the model to load, the run's own settings (run directory, resume, seed, progress) and
the typed config of every group of settings the command has; a group the command has no flags
for is ``None``. Every config validates itself on creation, and :class:`RunConfig` checks what
spans them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sparsearch.base.errors import SparsearchError
from sparsearch.base.settings import require, require_choice
from sparsearch.fitness.config import FitnessConfig, TrainConfig
from sparsearch.fitness.data import CalibrationConfig
from sparsearch.launch.cluster import ClusterConfig
from sparsearch.launch.config import SearchConfig
from sparsearch.launch.heal import HealConfig
from sparsearch.launch.heldout import HeldoutConfig
from sparsearch.launch.options import Resolved
from sparsearch.launch.tokens import fitness_source
from sparsearch.search.registry import ENGINES
from sparsearch.supernet.config import SupernetConfig

DTYPES = ("auto", "float32", "bfloat16", "float16")
Source = tuple[str, "str | None"]  # a calibration source and its location


@dataclass(frozen=True)
class RunConfig:
    """``model``: alias, folder, .gguf file or hub id (``None``: the command takes it from a run);
    ``dtype``/``device``: how it is loaded; ``progress``: progress bars and log lines (not
    ``--quiet``). ``search`` ... ``heal``: the command's typed configs (``None`` where it has none);
    ``scoring``: where a search's fitness, validation and training tokens come from
    (:func:`~sparsearch.launch.tokens.fitness_source` of its calibration and fitness configs);
    ``model_files``: the folder a hub ``model`` was staged to for a cluster's nodes
    (:func:`~sparsearch.supernet.models.hub_snapshot`), which every process loads instead."""

    model: str | None = None
    model_files: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False
    run_dir: Path | None = None
    resume: bool = False
    seed: int = 0
    progress: bool = True
    search: SearchConfig | None = None
    fitness: FitnessConfig | None = None
    calibration: CalibrationConfig | None = None
    scoring: CalibrationConfig | None = None  # the fitness, validation and training splits' source
    supernet: SupernetConfig | None = None
    train: TrainConfig | None = None
    heldout: HeldoutConfig | None = None
    cluster: ClusterConfig | None = None
    heal: HealConfig | None = None

    def __post_init__(self) -> None:
        require_choice("dtype", self.dtype, DTYPES)
        require(isinstance(self.seed, int) and 0 <= self.seed <= 2**32 - 1, "seed", self.seed, "within [0, 2**32 - 1]")
        for name in ("search", "calibration"):
            cfg = getattr(self, name)
            require(cfg is None or cfg.seed == self.seed, f"{name}.seed", getattr(cfg, "seed", None),
                    f"the run's seed {self.seed}")
        if self.search is not None:
            missing = [n for n in ("fitness", "calibration", "train", "cluster") if getattr(self, n) is None]
            require(not missing, "a search's run config", missing, "complete (no configs missing)")

    @property
    def load_spec(self) -> str | None:
        """What to load the model from: its staged folder, else ``model``."""
        return self.model_files or self.model

    def log(self, message: str) -> None:
        """One log line on stderr (none with ``progress`` off)."""
        if self.progress:
            print(message, file=sys.stderr, flush=True)

    @property
    def seqlens(self) -> dict[str, int]:
        """The sequence lengths a search will run (held-out windows only with a held-out text)."""
        out = {"calib_seqlen": self.calibration.seqlen}
        return out | ({"eval_seqlen": self.heldout.seqlen} if self.heldout and self.heldout.text else {})


def calibration_config(o: Resolved, default: Source = ("self", None)) -> CalibrationConfig:
    """The calibration source: one of --calib-text/--calib-dataset/--calib-self (from the command
    line if it names one, else from the preset), else ``default`` (source, location):
    self-generated unless the command says otherwise."""
    flags = ("calib_text", "calib_dataset", "calib_self")
    chosen = [f for f in flags if f in o.cli] or [f for f in flags if f in o.preset and o.values[f]]
    if len(chosen) > 1:
        raise SparsearchError("choose one calibration source: " + ", ".join("--" + f.replace("_", "-") for f in chosen))
    source, location = {"calib_text": ("text", o.calib_text), "calib_dataset": ("dataset", o.calib_dataset),
                        "calib_self": ("self", None)}.get(chosen[0] if chosen else "", default)
    return o.config(CalibrationConfig, source=source, location=location, seed=o.seed)


def search_config(o: Resolved, log: Callable[[str], None]) -> SearchConfig:
    """The search config; flags of other engines' settings that neither the engine nor its start
    uses are named in one warning line (``log``)."""
    engine_cls = ENGINES[o.engine].config
    init_cls = ENGINES[o.init].config if o.init in ENGINES and not ENGINES[o.engine].engine.one_shot else None
    configs = [entry.config for entry in ENGINES.values()]
    unused = sorted(set(o.unused(engine_cls, configs)) & set(o.unused(init_cls or engine_cls, configs)))
    if unused:
        log(f"sparsearch: warning: {', '.join(unused)} not used by engine {o.engine}"
            + (f" or its start {o.init}" if init_cls else ""))
    return o.config(SearchConfig, seed=o.seed, engine_config=o.config(engine_cls),
                    init_config=o.config(init_cls) if init_cls else None)


def run_config(o: Resolved, *, calibration: Callable[[Resolved], Source] | None = None,
               log: Callable[[str], None] = lambda _: None) -> RunConfig:
    """The command's :class:`RunConfig` from its resolved options (flags over preset over
    defaults). ``calibration(o)``: the source when no flag names one (default: self-generated),
    asked only once the command's own settings are valid; ``log`` gets the warning about unused
    engine flags. Configs are built in one order (search, healing, supernet, calibration,
    fitness, training, held-out, cluster), so that of several bad settings the first is named."""
    has, v = o.options.fields, o.values  # the config classes the command has flags for

    def typed(cls: type):
        return o.config(cls) if cls in has else None

    search = search_config(o, log) if SearchConfig in has else None
    heal = typed(HealConfig)
    if heal is not None and o.given("lora_rank") and heal.full:
        raise SparsearchError("--lora-rank and --full exclude each other")
    supernet = typed(SupernetConfig)
    calib = calibration_config(o, calibration(o) if calibration else ("self", None)) \
        if CalibrationConfig in has else None
    fitness = typed(FitnessConfig)
    if v.get("heal_tokens"):  # run --heal-tokens N: healing sequences as long as the calibration's
        heal = HealConfig(tokens=v["heal_tokens"], seqlen=calib.seqlen)
    return RunConfig(
        model=v.get("model"), dtype=v.get("dtype", "auto"), device=v.get("device", "auto"),
        trust_remote_code=v.get("trust_remote_code", False), run_dir=Path(v["run_dir"]) if v.get("run_dir") else None,
        resume=v.get("resume", False), seed=v.get("seed", 0), progress=not v.get("quiet", False), search=search,
        heal=heal, supernet=supernet, calibration=calib, fitness=fitness, train=typed(TrainConfig),
        scoring=fitness_source(calib, fitness) if calib and fitness else None,
        heldout=typed(HeldoutConfig), cluster=typed(ClusterConfig),
    )
