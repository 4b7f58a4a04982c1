"""What a run found: ``summary.json`` and PNG plots in the run directory.

Every file here is written whole (a temporary file and a rename): a full or read-only disk is one
error line and leaves the previous file, never a truncated one. :func:`read_summary` checks a
summary's fields before a command uses it (``export``, ``report``, ``heal``).
"""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsearch.base.atomic import atomic_write, atomic_write_json, read_json_object
from sparsearch.base.errors import SparsearchError
from sparsearch.search.runfiles import HISTORY, RunFiles

if TYPE_CHECKING:
    from sparsearch.launch.pipeline import SearchOutcome

SUMMARY = "summary.json"


def build_summary(outcome: "SearchOutcome", *, model: str, engine: str, target_sparsity: float,
                  wall_time_s: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    result, space, budget = outcome.result, outcome.space, outcome.budget
    g = tuple(result.best_genome)
    return {
        "model": model,
        "engine": engine,
        "target_sparsity": target_sparsity,
        "budget": {"cost": budget.model.kind, "limit": budget.limit, "tolerance": budget.tolerance,
                   "best_cost": budget.cost(g)},
        "best_genome": list(g),
        "sparsity": space.sparsity(g),
        "params": {"prunable_dense": space.dense_params, "prunable_kept": space.params(g),
                   "total": outcome.params_total},
        "fitness": {"kl": result.best_fitness, "metric": "mean top-k KL(dense || candidate), nats/token",
                    "schedule": outcome.schedule},
        "uniform": {"genome": list(outcome.uniform_genome), "sparsity": space.sparsity(outcome.uniform_genome),
                    "kl": outcome.uniform_fitness},
        "baselines": outcome.baselines,
        "validation": None if result.validation is None else {
            "metric": "mean top-k KL(dense || candidate) on the validation split, nats/token",
            "tokens": outcome.validation_tokens, "dense": 0.0, **result.validation},
        "evaluations": result.evaluations,
        "per_layer": space.per_layer(g),
        "pareto": result.pareto,
        "supernet": str(Path(outcome.store.path).absolute()),
        "host": socket.gethostname(),  # the machine whose paths "model" and "supernet" are
        "wall_time_s": round(wall_time_s, 2),
        **(extra or {}),
    }


def write_summary(run_dir: Path, summary: dict[str, Any]) -> Path:
    path = Path(run_dir) / SUMMARY
    atomic_write_json(path, summary)
    return path


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _is_genome(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in x)


def _summary_problem(s: dict[str, Any]) -> str | None:
    """What a command cannot use in the summary ``s`` (None: nothing)."""
    for key, ok, kind in (
        ("model", lambda v: isinstance(v, str) and v and "\x00" not in v, "a model"),
        ("supernet", lambda v: isinstance(v, str) and Path(v).is_absolute() and "\x00" not in v, "an absolute path"),
        ("engine", lambda v: isinstance(v, str), "a name"),
        ("best_genome", _is_genome, "a genome"),
        ("target_sparsity", _is_number, "a number"), ("sparsity", _is_number, "a number"),
        ("fitness", lambda v: isinstance(v, dict) and _is_number(v.get("kl")), "an object with kl"),
        ("uniform", lambda v: isinstance(v, dict) and _is_number(v.get("kl")), "an object with kl"),
        ("budget", lambda v: isinstance(v, dict) and isinstance(v.get("cost"), str) and _is_number(v.get("limit")),
         "an object with cost and limit"),
        ("per_layer", lambda v: isinstance(v, list) and all(
            isinstance(r, dict) and isinstance(r.get("layer"), int)
            and all(isinstance(r.get(k), dict) and _is_number(r[k].get("sparsity")) and _is_number(r[k].get("params"))
                    for k in ("attn", "mlp")) for r in v), "a list of layers"),
        ("pareto", lambda v: v is None or isinstance(v, list) and all(
            isinstance(p, dict) and _is_genome(p.get("genome")) and _is_number(p.get("cost"))
            and _is_number(p.get("fitness")) for p in v), "a list of points"),
    ):
        if key not in s and key == "pareto":
            continue
        if key not in s:
            return f"no {key}"
        if not ok(s[key]):
            return f"{key} is not {kind}"
    return None


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """The run's ``summary.json``, checked: a missing, torn or foreign file, or one without the
    fields a command uses, is one error line."""
    path = Path(run_dir) / SUMMARY
    if path.is_symlink():
        raise SparsearchError(f"run summary {path} is a symbolic link; sparsearch reads only its own files")
    if not path.is_file():
        raise SparsearchError(f"no {SUMMARY} in {run_dir}: run a search first")
    summary = read_json_object(path, "run summary")
    problem = _summary_problem(summary)
    if problem:
        raise SparsearchError(f"run summary {path}: {problem} (a torn or foreign file?); run the search again")
    return summary


def _save(fig, path: Path) -> None:
    """A figure as a whole PNG file: rendered in memory, then written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write(path, buf.getvalue())


def render(run_dir: str | Path) -> list[Path]:
    """Draw the run's plots from ``summary.json`` and ``history.jsonl``; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    history = RunFiles(run_dir).history()
    out = []

    rows = summary["per_layer"]
    layers = [r["layer"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.3), 3.5))
    w = 0.4
    ax.bar([l - w / 2 for l in layers], [r["attn"]["sparsity"] for r in rows], w, label="attention")
    ax.bar([l + w / 2 for l in layers], [r["mlp"]["sparsity"] for r in rows], w, label="MLP")
    ax.axhline(summary["target_sparsity"], color="gray", ls="--", lw=1, label="target")
    ax.set(xlabel="layer", ylabel="sparsity", ylim=(0, 1.05),
           title=f"{summary['engine']}: per-layer sparsity ({summary['sparsity']:.1%} of prunable params)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.append(run_dir / "sparsity.png")
    _save(fig, out[-1])
    plt.close(fig)

    if history:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([h["evaluations"] for h in history], [h["best_fitness"] for h in history], marker=".")
        ax.axhline(summary["uniform"]["kl"], color="gray", ls="--", lw=1, label="uniform")
        ax.set(xlabel="evaluations", ylabel="best fitness (KL, nats/token)", title="search progress")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out.append(run_dir / "fitness.png")
        _save(fig, out[-1])
        plt.close(fig)

    if summary.get("pareto"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        pts = sorted(summary["pareto"], key=lambda p: p["cost"])
        ax.plot([p["cost"] for p in pts], [p["fitness"] for p in pts], marker="o", ls="-")
        ax.axvline(summary["budget"]["limit"], color="gray", ls="--", lw=1, label="budget")
        ax.set(xlabel=f"cost ({summary['budget']['cost']})", ylabel="fitness (KL)", title="Pareto front")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out.append(run_dir / "pareto.png")
        _save(fig, out[-1])
        plt.close(fig)
    return out


def model_card(summary: dict[str, Any], genome: list[int], per_layer: list[dict[str, Any]], params: int) -> str:
    """README.md of an exported model: source, budget, method, per-layer shapes, size, fitness."""
    rows = []
    for r in per_layer:
        a, m = r["attn"], r["mlp"]
        heads = f"{a.get('heads', 0)} q / {a.get('kv_heads', 0)} kv" if a["params"] else "removed"
        chans = str(m.get("channels", 0)) if m["params"] else "removed"
        rows.append(f"| {r['layer']} | {heads} | {chans} |")
    ppl = summary.get("heldout", {}).get("perplexity")
    lines = [
        f"# {Path(str(summary['model'])).name} pruned by sparsearch",
        "",
        f"- Source model: `{summary['model']}`",
        f"- Budget: {summary['target_sparsity']:.1%} of prunable ({summary['budget']['cost']}) removed; "
        f"this model removes {summary['sparsity_of_genome']:.1%} of prunable parameters",
        f"- Method: `{summary['engine']}` search over a supernet of OBS-pruned, least-squares-refit variants",
        f"- Parameters: {params:,}",
        f"- Fitness (mean KL to the dense model on calibration-source tokens): {summary['fitness_of_genome']:.4f} nats/token",
    ]
    if ppl is not None:
        lines.append(f"- Held-out perplexity ({summary['heldout'].get('data')}): {ppl:.2f}")
    lines += [
        "",
        "Load with `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)` (the folder's",
        "`modeling_sparsearch.py`: transformers has no class for per-layer shapes), and the tokenizer",
        "with `PreTrainedTokenizerFast.from_pretrained(path)` (no remote code).",
        "",
        "| layer | attention heads | MLP channels |",
        "|---|---|---|",
        *rows,
        "",
        f"Genome: `{genome}`",
        "",
    ]
    return "\n".join(lines)


def healed_card(summary: dict[str, Any], heal: dict[str, Any]) -> str:
    """README.md of a healed export: the run's model card for its best genome, and how it was healed."""
    info = {**summary, "sparsity_of_genome": summary["sparsity"], "fitness_of_genome": summary["fitness"]["kl"]}
    card = model_card(info, summary["best_genome"], summary["per_layer"], heal["params"])
    calib = heal["settings"]["calibration"]
    lines = [
        "## Healing",
        "",
        "Distilled from the dense model (KL on next-token logits, "
        + (f"teacher top-{heal['settings']['heal']['teacher_topk']} cache" if heal["settings"]["heal"]["teacher_topk"]
           else "full vocabulary") + f") with `sparsearch heal`: {heal['method']}, {heal['steps']} steps, "
        f"{heal['tokens']:,} tokens from {calib['source']}" + (f" (`{calib['location']}`)" if calib.get("location") else "")
        + f", seed {calib['seed']}.",
    ]
    if heal["loss"]["first"] is not None:
        lines.append(f"Distillation loss {heal['loss']['first']:.4f} -> {heal['loss']['last']:.4f} nats/token.")
    if heal["perplexity"] is not None:
        p = heal["perplexity"]
        lines.append(f"Held-out perplexity ({p['data_tokens']:,} tokens): {p['before']:.2f} before healing, "
                     f"{p['after']:.2f} after.")
    return card + "\n".join(lines) + "\n"


def export_genome(model, tokenizer, summary: dict[str, Any], genome: list[int], out: Path, space,
                  dtype: str = "auto") -> Path:
    """Export ``model`` (stitched to ``genome``, the run's best or a Pareto point) to ``out``, with
    a model card from the run's ``summary``."""
    import torch

    from sparsearch.supernet.export import export

    if genome != summary["best_genome"]:
        summary = {k: v for k, v in summary.items() if k != "heldout"}  # measured for the best genome only
    info = {**summary, "sparsity_of_genome": space.sparsity(tuple(genome)),
            "fitness_of_genome": summary["fitness"]["kl"] if genome == summary["best_genome"]
            else next(p["fitness"] for p in summary["pareto"] if p["genome"] == genome)}
    params = sum(p.numel() for p in model.parameters())
    card = model_card(info, genome, space.per_layer(tuple(genome)), params)
    return export(model, tokenizer, out, card=card, dtype=None if dtype == "auto" else getattr(torch, dtype))
