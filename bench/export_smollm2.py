"""Export benchmark on the default model (SmolLM2-135M): dense vs exported uniform 25% and 50%
models — parameters, file size, prefill tokens/s, decode tokens/s with a KV cache, and WikiText-2
perplexity. Prints one JSON object.

    python -m bench.export_smollm2 --supernet bench/out/smollm2-with_accumulation [--eval-tokens 65536]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--supernet", required=True)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    p.add_argument("--eval-tokens", type=int, default=65536)
    p.add_argument("--out", default=str(ROOT / "bench" / "out" / "exports"))
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args()


def timed(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(folder, tok, args, windows, prompt, prefill, trust_remote_code: bool) -> dict:
    """One saved model: parameters, file size, prefill and decode tokens/s, perplexity."""
    import torch
    from transformers import AutoModelForCausalLM

    from sparsearch.fitness.metrics import perplexity

    m = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust_remote_code).eval()
    size = sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))
    with torch.no_grad():
        pre = timed(lambda: m(input_ids=prefill, use_cache=False), args.repeats)
        mask = torch.ones_like(prompt)

        def gen(n):
            return lambda: m.generate(prompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                      do_sample=False, pad_token_id=tok.eos_token_id)

        # decode time: generating N tokens minus generating 1 (which is the prompt's prefill)
        dec = timed(gen(args.new_tokens), args.repeats) - timed(gen(1), args.repeats)
    return {
        "params": sum(p.numel() for p in m.parameters()),
        "file_mib": round(size / 2**20, 1),
        "prefill_tokens_per_s": round(prefill.numel() / pre, 1),
        "decode_tokens_per_s": round((args.new_tokens - 1) / dec, 1),
        "wikitext2_ppl": round(perplexity(m, windows)["perplexity"], 2),
    }


def main() -> None:
    args = parse_args()

    import torch

    from sparsearch.fitness.data import read_text, tokenize_text
    from sparsearch.fitness.metrics import eval_windows
    from sparsearch.supernet.export import export
    from sparsearch.supernet.models import load_model, smollm2_folder
    from sparsearch.supernet.stitch import Stitcher
    from sparsearch.supernet.store import SupernetStore

    torch.set_num_threads(2)
    model, tok = load_model("smollm2-135m")
    ids = tokenize_text(read_text(Path(args.data_dir) / "wikitext-2-raw" / "wiki.test.raw"), tok)
    windows = eval_windows(ids, 512, args.eval_tokens)
    prompt = ids[: args.prompt][None]
    prefill = ids[:512][None]

    out_root = Path(args.out)
    shutil.rmtree(out_root, ignore_errors=True)
    stitcher = Stitcher(model, SupernetStore.open(args.supernet))
    folders = {"dense": smollm2_folder()}
    for s in (0.25, 0.5):
        stitcher.apply(stitcher.space.uniform(s))
        folders[f"uniform_{s}"] = export(model, tok, out_root / f"uniform-{s}")

    result = {"model": "smollm2-135m", "threads": 2, "dtype": "float32", "eval_tokens": int(windows.numel()),
              "prompt_tokens": args.prompt, "new_tokens": args.new_tokens}
    for name, folder in folders.items():
        result[name] = measure(folder, tok, args, windows, prompt, prefill, trust_remote_code=name != "dense")
    dense = result["dense"]
    for name in ("uniform_0.25", "uniform_0.5"):
        result[name]["decode_speedup"] = round(result[name]["decode_tokens_per_s"] / dense["decode_tokens_per_s"], 3)
        result[name]["prefill_speedup"] = round(result[name]["prefill_tokens_per_s"] / dense["prefill_tokens_per_s"], 3)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
