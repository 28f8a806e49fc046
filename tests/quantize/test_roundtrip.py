"""The default model's round trip: its GGUF -> transformers (dequantized) -> HF directory -> our F32 GGUF.

transformers' GGUF loader is an independent implementation (it undoes llama.cpp's q/k permutation
and rebuilds the tokenizer), so agreeing with llama.cpp's own F32 dequantization of the original
file checks every step of our converter on a real 30-layer model.
"""

from __future__ import annotations

import numpy as np
import pytest

PROMPTS = [
    "The capital of France is",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):",
    "我们家楼下有一家小面馆",
]


def logits_and_greedy(path, prompts, n_new=24):
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=512, logits_all=True, verbose=False, n_threads=2,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    results = []
    for prompt in prompts:
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
        llm.reset()
        llm.eval(ids)
        logits = np.array(llm.scores[: len(ids)])
        new = []
        for _ in range(n_new):
            new.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
            llm.eval([new[-1]])
        results.append((ids, logits, new))
    llm.close()
    return results


@pytest.mark.slow
def test_smollm2_round_trip_matches_llama_cpp_dequantized_original(default_model_path, smollm2_f32, tmp_path):
    from belle.quantize.llama_quantize import dequantize_to_f32

    reference = dequantize_to_f32(default_model_path, tmp_path / "orig.f32.gguf")
    ours = logits_and_greedy(smollm2_f32, PROMPTS)
    theirs = logits_and_greedy(reference, PROMPTS)
    for prompt, (ids_a, la, ga), (ids_b, lb, gb) in zip(PROMPTS, ours, theirs):
        assert ids_a == ids_b, prompt  # same tokenization after the round trip
        assert np.abs(la - lb).max() <= 1e-4 * np.abs(lb).max(), prompt
        assert ga == gb, prompt
    # and the answer the model is known for
    import llama_cpp

    llm = llama_cpp.Llama(str(smollm2_f32), n_ctx=256, verbose=False)
    assert "Paris" in llm.detokenize(ours[1][2]).decode()
    llm.close()


@pytest.mark.slow
def test_smollm2_round_trip_close_to_quantized_original(default_model_path, smollm2_f32):
    """Against the Q4_1 file itself only kernels differ (Q4_1 x Q8_1 dot products), so: close, not equal."""
    ours = logits_and_greedy(smollm2_f32, PROMPTS[:2], n_new=12)
    original = logits_and_greedy(default_model_path, PROMPTS[:2], n_new=12)
    for (_, la, ga), (_, lb, gb) in zip(ours, original):
        assert np.abs(la - lb).max() < 0.1 * np.abs(lb).max()
        assert (la.argmax(-1) == lb.argmax(-1)).mean() >= 0.9
        assert ga == gb
