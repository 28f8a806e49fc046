"""The per-tensor types of llama.cpp's quantization recipes, for quantizers that write GGUF themselves.

A quantizer of our own (GPTQ) must give every tensor the type llama.cpp's quantizer would give it,
so that "Q4_K_M" means the same file layout whoever made it. This is a port of llama.cpp's type
selection in src/llama-quant.cpp (tensor_allows_quantization, tensor_get_category,
llama_tensor_get_type, llama_tensor_get_type_impl, tensor_type_fallback; the version vendored by
llama-cpp-python 0.3.36), cut down to the branches our recipes (GPTQ_TYPES) and architectures
(llama, qwen2, bloom; no mixture of experts) reach. tests/quantize/test_recipes.py checks it
against llama.cpp itself.

How llama.cpp decides, in order:
1. Tensors with fewer than two dimensions (ne > 1), names not ending in "weight", and norms are not
   quantized: they keep their type (F32, as our converter writes them).
2. --token-embedding-type / --output-tensor-type win outright for token_embd / output, with no
   fallback (an incompatible row width makes llama.cpp abort; we raise instead).
3. Unless `pure`, the recipe's rules: output.weight becomes Q6_K (Q8_0 when the recipe's own type
   is Q8_0 or its block does not divide the row); without an output.weight (tied embeddings) the
   same rule applies to token_embd; attn_v (BLOOM's fused attn_qkv counts as attn_v) and ffn_down
   get more bits on some layers in Q4_K_M / Q5_K_M / Q4_K_S.
4. A type whose block does not divide the row width (ne[0], the input dimension) falls back:
   Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, and to F16 where even a block of 32 does not divide
   it (the legacy types Q4_0 .. Q8_0 go straight to F16). So no recipe here is ever refused for
   its shapes; llama.cpp refuses only types with no fallback (Q1_0, NVFP4), which a type override
   can name.

`pure` (llama-quantize --pure) skips step 3 only: output.weight and token_embd.weight get the
recipe's own type too, with the fallback of step 4. Q4_K and Q5_K, which llama.cpp has no file type
for, are the pure forms of Q4_K_S / Q5_K_S, and their files record MOSTLY_Q4_K_S / MOSTLY_Q5_K_S,
as llama.cpp's own pure files do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from belle.app.errors import BelleError

from .constants import GPTQ_TYPES

T = GGMLQuantizationType



@dataclass(frozen=True)
class _Recipe:
    ftype: LlamaFileType
    base: GGMLQuantizationType  # llama_ftype_get_default_type(ftype)
    pure: bool


_RECIPES: dict[str, _Recipe] = {
    "Q4_0": _Recipe(LlamaFileType.MOSTLY_Q4_0, T.Q4_0, False),
    "Q4_1": _Recipe(LlamaFileType.MOSTLY_Q4_1, T.Q4_1, False),
    "Q5_0": _Recipe(LlamaFileType.MOSTLY_Q5_0, T.Q5_0, False),
    "Q5_1": _Recipe(LlamaFileType.MOSTLY_Q5_1, T.Q5_1, False),
    "Q8_0": _Recipe(LlamaFileType.MOSTLY_Q8_0, T.Q8_0, False),
    "Q4_K": _Recipe(LlamaFileType.MOSTLY_Q4_K_S, T.Q4_K, True),
    "Q5_K": _Recipe(LlamaFileType.MOSTLY_Q5_K_S, T.Q5_K, True),
    "Q6_K": _Recipe(LlamaFileType.MOSTLY_Q6_K, T.Q6_K, False),
    "Q4_K_S": _Recipe(LlamaFileType.MOSTLY_Q4_K_S, T.Q4_K, False),
    "Q4_K_M": _Recipe(LlamaFileType.MOSTLY_Q4_K_M, T.Q4_K, False),
    "Q5_K_M": _Recipe(LlamaFileType.MOSTLY_Q5_K_M, T.Q5_K, False),
}
assert set(_RECIPES) == set(GPTQ_TYPES)

ARCHES = ("llama", "qwen2", "bloom")

# tensor_type_fallback: what a type becomes when its block does not divide the row width (and F16
# when the fallback's block does not divide it either). Types with blocks of 32 fall back to
# themselves, hence to F16; a type missing here has no fallback, and llama.cpp refuses the model.
# Q4_K / Q5_K / Q6_K and the 32-blocks are reachable from the recipes; the rest from type overrides.
# (The block-32 entries and the refusals were measured on the installed llama.cpp, whose fallback
# is more lenient than older versions, which refused the legacy types.)
_FALLBACK: dict[GGMLQuantizationType, GGMLQuantizationType] = {
    **{t: T.IQ4_NL for t in (T.IQ1_S, T.IQ1_M, T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ4_XS)},
    **{t: T.Q4_0 for t in (T.Q2_K, T.Q3_K, T.TQ1_0, T.TQ2_0)},
    T.Q4_K: T.Q5_0,
    T.Q5_K: T.Q5_1,
    T.Q6_K: T.Q8_0,
    **{t: t for t in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.IQ4_NL, T.MXFP4)},
}

# 2-D tensors llama.cpp never quantizes, by substring (tensor_allows_quantization); none of them
# occurs in our architectures, but a name that slips in must not be quantized here either
_NEVER_QUANTIZED = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
    "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight", "time_mix_first.weight",
    "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight",
    "time_mix_v2.weight", "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
    "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight",
    "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.", "sam.net_", ".rel_pos", ".patch_embd",
    ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
_NEVER_QUANTIZED_NAMES = ("position_embd.weight", "token_types.weight")

# tensor_get_category, in llama.cpp's order (attn_qkv before attn_v before attn_k ...)
_OUTPUT, _TOKEN_EMBD, _ATTN_QKV, _ATTN_KV_B, _ATTN_V, _ATTN_K, _ATTN_Q, _ATTN_OUTPUT = range(8)
_FFN_UP, _FFN_GATE, _FFN_DOWN, _OTHER = range(8, 12)
_CATEGORY_NEEDLES = (("attn_qkv.weight", _ATTN_QKV), ("attn_kv_b.weight", _ATTN_KV_B), ("attn_v.weight", _ATTN_V),
                     ("attn_k.weight", _ATTN_K), ("attn_q.weight", _ATTN_Q), ("attn_output.weight", _ATTN_OUTPUT),
                     ("ffn_up", _FFN_UP), ("ffn_gate", _FFN_GATE), ("ffn_down", _FFN_DOWN))
_ATTN_V_LIKE = (_ATTN_V, _ATTN_QKV, _ATTN_KV_B)

_LAYER_RE = re.compile(r"blk\.([+-]?\d+)")
_MOE_RE = re.compile(r"_(exps|shexp|chexps?)\b|ffn_gate_inp")


def recipe_ftype(recipe: str) -> LlamaFileType:
    """The general.file_type a GGUF quantized with `recipe` records (what llama.cpp writes for it)."""
    return _recipe(recipe).ftype


def recipe_pure(recipe: str) -> bool:
    """Whether llama.cpp makes `recipe` with --pure (the single-type recipes Q4_K and Q5_K)."""
    return _recipe(recipe).pure


def tensor_types(tensors: list[tuple[str, tuple[int, ...]]], arch: str, n_layer: int, recipe: str, *,
                 output_type: str | None = None, embd_type: str | None = None,
                 imatrix: bool = False) -> dict[str, GGMLQuantizationType]:
    """GGUF tensor name + numpy shape ([rows, cols], cols = input dim) -> the type llama.cpp would give it.

    `tensors` must be every tensor of the model (the layer promotions count attn_v tensors, and tied
    embeddings are recognised by the absence of output.weight). arch is the GGUF architecture name
    ("llama", "qwen2", "bloom"); n_layer its block_count. output_type / embd_type override the
    output.weight / token_embd.weight types like llama-quantize's --output-tensor-type /
    --token-embedding-type. imatrix: choose as llama.cpp does when given an importance matrix (only
    Q4_0 / Q5_0 differ: ffn_down of the first eighth of the layers becomes Q4_1 / Q5_1).
    Tensors llama.cpp leaves unquantized (1-D, norms) are given F32, the type our converter writes.
    Raises BelleError where llama.cpp would refuse or abort: an override type that does not fit its
    row width (llama.cpp takes overrides as they are), or a type with no fallback.
    """
    rec = _recipe(recipe)
    if arch not in ARCHES:
        raise BelleError(f"architecture {arch!r}: llama.cpp's recipes are ported for {', '.join(ARCHES)} only")
    if n_layer < 1:
        raise BelleError(f"n_layer {n_layer}: must be at least 1")
    out_t, embd_t = _parse_type(output_type, "output_type"), _parse_type(embd_type, "embd_type")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, shape in tensors:
        if name in shapes:
            raise BelleError(f"tensor {name} is listed twice")
        shape = tuple(int(d) for d in shape)
        if not shape or any(d < 1 for d in shape):
            raise BelleError(f"tensor {name}: bad shape {shape}")
        if _MOE_RE.search(name) or _n_dims(shape) > 2:
            raise BelleError(f"tensor {name}: mixture-of-experts models are not supported "
                             "(llama.cpp's MoE rules are not ported)")
        shapes[name] = shape

    category = {name: _category(name) for name in shapes}
    state = _State(
        n_layer=n_layer,
        n_attention_wv=sum(c in _ATTN_V_LIKE for c in category.values()),
        # llama.cpp assumes tied embeddings until it sees output.weight
        tied=_OUTPUT not in category.values(),
        is_70b=_is_70b(arch, n_layer, shapes),
        imatrix=imatrix,
    )

    result: dict[str, GGMLQuantizationType] = {}
    # llama.cpp walks the tensors in its loader's order (by layer, then by name): the attn_v /
    # ffn_down counters that pick the promoted layers depend on it
    for name in sorted(shapes, key=_loader_order):
        shape, cat = shapes[name], category[name]
        if not _allows_quantization(name, shape):
            result[name] = T.F32
        elif embd_t is not None and cat == _TOKEN_EMBD:
            result[name] = _checked(name, shape, embd_t)
        elif out_t is not None and cat == _OUTPUT:
            result[name] = _checked(name, shape, out_t)
        else:
            new_type = rec.base
            if not rec.pure:
                new_type = _recipe_rules(state, shape, cat, rec, new_type, out_t)
            result[name] = _fallback(name, shape, new_type)
    return {name: result[name] for name in shapes}


# --- internals -------------------------------------------------------------------------------

@dataclass
class _State:  # quantize_state_impl, the parts our branches read
    n_layer: int
    n_attention_wv: int
    tied: bool
    is_70b: bool
    imatrix: bool
    i_attention_wv: int = 0
    i_ffn_down: int = 0


def _recipe(recipe: str) -> _Recipe:
    if recipe not in _RECIPES:
        raise BelleError(f"--type {recipe!r}: choose one of {', '.join(GPTQ_TYPES)}")
    return _RECIPES[recipe]


def _parse_type(value, what: str) -> GGMLQuantizationType | None:
    if value is None or isinstance(value, GGMLQuantizationType):
        return value
    try:
        return GGMLQuantizationType[str(value).upper()]
    except KeyError:
        raise BelleError(f"{what} {value!r}: not a GGML type (e.g. Q8_0, Q6_K, F16)") from None


def _block(t: GGMLQuantizationType) -> int:
    return GGML_QUANT_SIZES[t][0]


def _n_dims(shape: tuple[int, ...]) -> int:
    # ggml_n_dims: trailing dimensions of size 1 do not count, so a [1, n] tensor is 1-D
    ne = shape[::-1]
    return max([i + 1 for i, d in enumerate(ne) if d > 1], default=1)


def _loader_order(name: str):
    # llama_model_loader's weight_name_comparer: blk.N tensors by N (others first), then by name
    m = _LAYER_RE.match(name)
    return (int(m.group(1)) if m else -1, name.encode())


def _category(name: str) -> int:
    if name == "output.weight":
        return _OUTPUT
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return _TOKEN_EMBD
    for needle, cat in _CATEGORY_NEEDLES:
        if needle in name:
            return cat
    return _OTHER


def _allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    if _n_dims(shape) < 2 or not name.endswith("weight"):
        return False
    return name not in _NEVER_QUANTIZED_NAMES and not any(s in name for s in _NEVER_QUANTIZED)


def _is_70b(arch: str, n_layer: int, shapes: dict[str, tuple[int, ...]]) -> bool:
    # llama.cpp's model type LLM_TYPE_70B gives attn_v more bits. The loader sets it for 80-layer
    # qwen2 and for 80-layer llama with grouped-query attention (n_head != n_head_kv: fewer rows in
    # attn_k than in attn_q); BLOOM never has it.
    if n_layer != 80:
        return False
    if arch == "qwen2":
        return True
    if arch == "llama":
        q, k = shapes.get("blk.0.attn_q.weight"), shapes.get("blk.0.attn_k.weight")
        return q is not None and k is not None and q[0] != k[0]
    return False


def _use_more_bits(i_layer: int, n_layers: int) -> bool:
    # the first and last eighth of the layers, and every third one in between
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _recipe_rules(st: _State, shape: tuple[int, ...], cat: int, rec: _Recipe,
                  new_type: GGMLQuantizationType, out_t: GGMLQuantizationType | None) -> GGMLQuantizationType:
    """llama_tensor_get_type_impl for our recipes and architectures (no falcon, MoE, IQ or Q2/Q3 rules)."""
    ftype = rec.ftype
    F = LlamaFileType
    if cat == _OUTPUT or (st.tied and cat == _TOKEN_EMBD):
        # with tied embeddings token_embd is the output matrix, so it gets the output's type
        if out_t is not None:
            return out_t
        if shape[-1] % _block(new_type) != 0:
            return T.Q8_0
        return new_type if new_type == T.Q8_0 else T.Q6_K
    if cat == _TOKEN_EMBD:
        return new_type  # no token_embd rule for our recipes
    if cat in _ATTN_V_LIKE:
        if ftype in (F.MOSTLY_Q4_K_M, F.MOSTLY_Q5_K_M) and _use_more_bits(st.i_attention_wv, st.n_attention_wv):
            new_type = T.Q6_K
        elif ftype == F.MOSTLY_Q4_K_S and st.i_attention_wv < 4:
            new_type = T.Q5_K
        if st.is_70b and new_type in (T.Q3_K, T.Q4_K):
            # 70B models share each attn_v among 8 heads: a small tensor worth more bits
            new_type = T.Q5_K
        st.i_attention_wv += 1
        return new_type
    if cat == _FFN_DOWN:
        i_layer, n_layer = st.i_ffn_down, st.n_layer
        if ftype == F.MOSTLY_Q4_K_M:
            if _use_more_bits(i_layer, n_layer):
                new_type = T.Q6_K
        elif ftype == F.MOSTLY_Q5_K_M and _use_more_bits(i_layer, n_layer):
            new_type = T.Q6_K
        elif ftype == F.MOSTLY_Q4_K_S and i_layer < n_layer // 8:
            new_type = T.Q5_K
        elif ftype in (F.MOSTLY_Q4_0, F.MOSTLY_Q5_0) and st.imatrix and i_layer < n_layer // 8:
            new_type = T.Q4_1 if ftype == F.MOSTLY_Q4_0 else T.Q5_1
        st.i_ffn_down += 1
        return new_type
    # attn_q, attn_k, attn_output, ffn_gate, ffn_up: no rule for our recipes outside 8-expert models
    return new_type


def _fallback(name: str, shape: tuple[int, ...], new_type: GGMLQuantizationType) -> GGMLQuantizationType:
    """tensor_type_fallback: a type whose block does not divide the row width is replaced."""
    ncols = shape[-1]
    if ncols % _block(new_type) == 0:
        return new_type
    if new_type not in _FALLBACK:
        raise BelleError(f"tensor {name}: row width {ncols} is not a multiple of {_block(new_type)}, which "
                         f"{new_type.name} needs, and llama.cpp has no fallback for {new_type.name}: "
                         "it refuses the model")
    fallback = _FALLBACK[new_type]
    return fallback if ncols % _block(fallback) == 0 else T.F16


def _checked(name: str, shape: tuple[int, ...], t: GGMLQuantizationType) -> GGMLQuantizationType:
    # an explicit output / token-embedding type is taken as is; llama.cpp aborts on a misfit
    if shape[-1] % _block(t) != 0:
        raise BelleError(f"tensor {name}: row width {shape[-1]} is not a multiple of {_block(t)}, which {t.name} needs")
    return t
