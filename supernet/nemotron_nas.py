"""The ``nemotron-nas`` (DeciLM) config schema, which vLLM's built-in ``DeciLMForCausalLM`` serves.

A genome fits the schema when:

- every kept attention block has the same number of query heads ``H`` (the model-wide
  ``num_attention_heads``), an integer number of query heads per KV head (``n_heads_in_group``),
  and the standard contiguous grouping (query head ``j`` reads KV head ``j // n_heads_in_group``);
- every kept MLP width is expressible as DeciLM's ``ffn_mult``: the width is a multiple of 256
  and ``find_multiple(int(2 * ffn_mult * hidden / 3), 256)`` gives it back;
- removed attention or MLP blocks are ``no_op``;
- the first layer that is not removed entirely keeps its attention: vLLM's DeciLM starts the
  residual stream in the first attention block it runs, and a first layer with only an MLP fails
  in its ``post_attention_layernorm`` (``residual`` is None).
"""

from __future__ import annotations

from typing import Any

FFN_MULTIPLE = 256


def _ffn_mult_to_width(ffn_mult: float, hidden: int) -> int:
    width = int(2 * ffn_mult * hidden / 3)
    return width if width % FFN_MULTIPLE == 0 else width + FFN_MULTIPLE - width % FFN_MULTIPLE


def width_to_ffn_mult(width: int, hidden: int) -> float | None:
    """The ``ffn_mult`` that DeciLM turns back into ``width``, or ``None`` if there is none."""
    if width % FFN_MULTIPLE:
        return None
    for mult in (round(width * 3 / (2 * hidden), 6), width * 3 / (2 * hidden)):
        if _ffn_mult_to_width(mult, hidden) == width:
            return mult
    return None


def block_configs(layer_configs: list[dict[str, Any]], hidden: int) -> tuple[list[dict] | None, int | None, str]:
    """``(block_configs, num_attention_heads, "")`` when the layers fit the schema, else
    ``(None, None, reason)``."""
    heads = {spec["attention"]["heads"] for spec in layer_configs if spec["attention"]}
    if len(heads) > 1:
        return None, None, f"kept attention blocks have different query-head counts {sorted(heads)}"
    H = heads.pop() if heads else None
    first = next((i for i, spec in enumerate(layer_configs) if spec["attention"] or spec["mlp"]), None)
    if first is not None and not layer_configs[first]["attention"]:
        return None, None, f"layer {first}, the first non-empty layer, has no attention (vLLM's DeciLM needs it)"
    blocks = []
    for i, spec in enumerate(layer_configs):
        attn, mlp = spec["attention"], spec["mlp"]
        if attn:
            group, rem = divmod(attn["heads"], attn["kv_heads"])
            if rem or attn["kv_index"] != [j // group for j in range(attn["heads"])]:
                return None, None, f"layer {i}: query heads are not evenly grouped over KV heads"
            a = {"no_op": False, "replace_with_linear": False, "n_heads_in_group": group}
        else:
            a = {"no_op": True, "replace_with_linear": False, "n_heads_in_group": None}
        if mlp:
            mult = width_to_ffn_mult(mlp["channels"], hidden)
            if mult is None:
                return None, None, f"layer {i}: MLP width {mlp['channels']} is not expressible as an ffn_mult"
            f = {"no_op": False, "replace_with_linear": False, "ffn_mult": mult}
        else:
            f = {"no_op": True, "replace_with_linear": False, "ffn_mult": None}
        blocks.append({"attention": a, "ffn": f})
    return blocks, H, ""
