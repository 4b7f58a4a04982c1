"""Greedy decoding of an export with vLLM (run in a venv that has vLLM; see tests/test_vllm.py).

    VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE=1 python tests/vllm_serve.py EXPORT PROMPTS.json TOKENS

PROMPTS.json is a list of token-id lists; prints one line "RESULT " + a JSON object: {"ids": [[...], ...], "logprobs": [[...], ...]}
(the chosen tokens' log-probabilities). Imports only vLLM, so it runs without sparsearch installed.
"""

import json
import sys


def main() -> None:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    folder, prompts_file, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    prompts = json.load(open(prompts_file))
    llm = LLM(model=folder, trust_remote_code=True, dtype="float32", enforce_eager=True, skip_tokenizer_init=True,
              max_model_len=64, max_num_seqs=4, max_num_batched_tokens=256, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=tokens, logprobs=1, detokenize=False, ignore_eos=True)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
    ids = [list(o.outputs[0].token_ids) for o in outs]
    logprobs = [[step[t].logprob for step, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)] for o in outs]
    print("RESULT " + json.dumps({"ids": ids, "logprobs": logprobs}), flush=True)


if __name__ == "__main__":
    main()
