"""What a run found: ``summary.json`` and PNG plots in the run directory."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsearch.base.atomic import atomic_write_json
from sparsearch.search.runfiles import HISTORY

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


def render(run_dir: str | Path) -> list[Path]:
    """Draw the run's plots from ``summary.json`` and ``history.jsonl``; returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    summary = json.loads((run_dir / SUMMARY).read_text())
    history = [json.loads(l) for l in (run_dir / HISTORY).read_text().splitlines()] if (run_dir / HISTORY).is_file() else []
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
    fig.savefig(out[-1], dpi=120)
    plt.close(fig)

    if history:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([h["evaluations"] for h in history], [h["best_fitness"] for h in history], marker=".")
        ax.axhline(summary["uniform"]["kl"], color="gray", ls="--", lw=1, label="uniform")
        ax.set(xlabel="evaluations", ylabel="best fitness (KL, nats/token)", title="search progress")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out.append(run_dir / "fitness.png")
        fig.savefig(out[-1], dpi=120)
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
        fig.savefig(out[-1], dpi=120)
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
