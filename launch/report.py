"""What a run found: ``summary.json`` and PNG plots in the run directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparsearch.search.checkpoint import HISTORY, atomic_write_json

SUMMARY = "summary.json"


def build_summary(found: dict[str, Any], *, model: str, engine: str, target_sparsity: float,
                  wall_time_s: float, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    result, space, budget = found["result"], found["space"], found["budget"]
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
                   "total": found["params_total"]},
        "fitness": {"kl": result.best_fitness, "metric": "mean top-k KL(dense || candidate), nats/token",
                    "schedule": found["schedule"]},
        "uniform": {"genome": list(found["uniform_genome"]), "sparsity": space.sparsity(found["uniform_genome"]),
                    "kl": found["uniform_fitness"]},
        "baselines": found.get("baselines", {}),
        "evaluations": result.evaluations,
        "per_layer": space.per_layer(g),
        "pareto": result.pareto,
        "supernet": str(found["store"].path),
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
        "Load with `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`.",
        "",
        "| layer | attention heads | MLP channels |",
        "|---|---|---|",
        *rows,
        "",
        f"Genome: `{genome}`",
        "",
    ]
    return "\n".join(lines)
