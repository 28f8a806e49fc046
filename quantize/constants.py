"""Format facts for the quantize package, in one place (code imports these, never repeats them).

Sources: llama.cpp `convert_hf_to_gguf.py`, `src/llama-vocab.cpp` (pre-tokenizer regexes),
`src/llama-quant.cpp` (ftype recipes), `tools/imatrix/imatrix.cpp` (imatrix GGUF keys),
`tools/perplexity/perplexity.cpp` (chunking), and gguf-py `constants.py`.
"""

from __future__ import annotations
from belle.app.template_data import BELLE_JINJA, CHATML_JINJA

# Names, not gguf enums, so that `belle --help` and `belle chat` (which import the CLI modules that
# import this) do not pay for importing gguf; `outtype_types` / `quant_ftype` resolve them.

# --- converter output types -------------------------------------------------------------------
# outtype -> (GGMLQuantizationType of 2-D weights, LlamaFileType for general.file_type). 1-D tensors
# (norms, biases) stay F32, as in convert_hf_to_gguf.py: llama.cpp's CPU kernels want F32 for them.
OUTTYPES: dict[str, tuple[str, str]] = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
}

# --- llama.cpp quantizer recipes: name -> LlamaFileType member (llama_ftype in llama.h) ---------
QUANT_TYPES: dict[str, str] = {
    "Q8_0": "MOSTLY_Q8_0",
    "Q6_K": "MOSTLY_Q6_K",
    "Q5_K_M": "MOSTLY_Q5_K_M",
    "Q4_K_M": "MOSTLY_Q4_K_M",
    "Q4_K_S": "MOSTLY_Q4_K_S",
    "Q4_0": "MOSTLY_Q4_0",
    "Q4_1": "MOSTLY_Q4_1",
    "Q5_0": "MOSTLY_Q5_0",
    "Q5_1": "MOSTLY_Q5_1",
    "Q3_K_M": "MOSTLY_Q3_K_M",
    "Q2_K": "MOSTLY_Q2_K",
}


def outtype_types(outtype: str):
    """(GGMLQuantizationType, LlamaFileType) for a converter --outtype."""
    from gguf import GGMLQuantizationType, LlamaFileType

    tensor_type, file_type = OUTTYPES[outtype]
    return GGMLQuantizationType[tensor_type], LlamaFileType[file_type]


def quant_ftype(qtype: str) -> int:
    """The llama_ftype value of a quantization recipe name."""
    from gguf import LlamaFileType

    return int(LlamaFileType[QUANT_TYPES[qtype]])
QUANT_METHODS = ("rtn", "imatrix")

# --type names our GPTQ quantizer accepts: the block types it has grids for and llama.cpp's recipes
# built only from them (recipes.py gives each tensor its type)
GPTQ_TYPES: tuple[str, ...] = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K",
                               "Q4_K_S", "Q4_K_M", "Q5_K_M")

# --- tokenizer pre-tokenizers ------------------------------------------------------------------
# llama.cpp picks its pre-tokenizer regexes from `tokenizer.ggml.pre`. convert_hf_to_gguf.py finds
# the name by hashing the tokenization of a fixed text, which only works for tokenizers it has seen;
# we instead read the pre-tokenizer that tokenizer.json declares and match it against the regexes
# llama-vocab.cpp uses for each name. Keys are the Split regexes in order; "<bytelevel>" stands for
# a ByteLevel pre-tokenizer with use_regex=True (GPT-2's own regex); "<digits>" for Digits(individual).
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BLOOM_REGEX = r" ?[^(\s|[.,!?…。，、।۔،])]+"

PRE_TOKENIZERS: dict[tuple[str, ...], str] = {
    ("<bytelevel>",): "gpt-2",
    ("<digits>", "<bytelevel>"): "smollm",
    (LLAMA3_REGEX, "<bytelevel-noregex>"): "llama-bpe",
    (QWEN2_REGEX, "<bytelevel-noregex>"): "qwen2",
    (BLOOM_REGEX, "<bytelevel-noregex>"): "bloom",
}
SENTENCEPIECE_PRE = "default"

# --- chat templates ----------------------------------------------------------------------------
# One definition for the app and the converter: the format BELLE trains on (train v2,
# "Human: \n{text}\n\nAssistant: \n" + answer + EOS), so a converted BELLE model and the app agree.
CHAT_TEMPLATES: dict[str, str] = {"belle": BELLE_JINJA, "chatml": CHATML_JINJA}

# --- evaluation (tools/perplexity/perplexity.cpp) ----------------------------------------------
PPL_CHUNK = 512  # llama.cpp's default n_ctx for perplexity; the first half of each chunk is context only

# --- imatrix GGUF (tools/imatrix/imatrix.cpp, save_imatrix) -----------------------------------
IMATRIX_TYPE = "imatrix"  # general.type
IMATRIX_KEY_DATASETS = "imatrix.datasets"
IMATRIX_KEY_CHUNK_COUNT = "imatrix.chunk_count"
IMATRIX_KEY_CHUNK_SIZE = "imatrix.chunk_size"
IMATRIX_SUFFIX_SUMS = ".in_sum2"
IMATRIX_SUFFIX_COUNTS = ".counts"
