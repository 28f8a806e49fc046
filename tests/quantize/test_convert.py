"""Converter parity: llama.cpp on our GGUF must compute what transformers computes on the HF model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantize_helpers import llama_logits

KINDS = ["llama-bpe", "llama-spm", "qwen2", "bloom"]

TEXTS = [
    "Hello, world! How are you today?",
    "我们家楼下有一家小面馆，老板姓陈，每天早上六点就开门。",
    "emoji 🚀😶‍🌫️ ✅ 🦙🦙 test",
    "def f(x):\n    return x * 2  # double it\n",
    "3 33 333 3333 33333 价格是 12.5 元。",
    "  leading spaces,\ttabs\n\nand   newlines  ",
    "Mixed 中文 and English 混合 text: I've been 'told' he's there.",
    "ÀÉÎÕÜ нещо на Български ------======= ??!!",
]


def hf_tokenize(model_dir, text):
    """The reference tokenizer: Hugging Face's, or SentencePiece itself for a LLaMA tokenizer.model."""
    if (model_dir / "tokenizer.model").is_file():
        import sentencepiece as spm

        return spm.SentencePieceProcessor(model_file=str(model_dir / "tokenizer.model")).encode(text)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir)).encode(text, add_special_tokens=False)


def hf_logits(model_dir, ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.mark.parametrize("kind", KINDS)
def test_f32_logits_match_transformers(kind, tiny_model, tiny_gguf):
    model_dir = tiny_model(kind)
    ids = hf_tokenize(model_dir, TEXTS[1] + " " + TEXTS[0] + TEXTS[3])[:64]
    assert len(ids) >= 32
    ref = hf_logits(model_dir, ids)
    got = llama_logits(tiny_gguf(kind), ids)
    assert got.shape == ref.shape
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert rel < 1e-3, f"{kind}: max relative logit error {rel:.2e}"
    assert (got.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.parametrize("kind", KINDS)
def test_llama_cpp_tokenizer_matches_hf(kind, tiny_model, tiny_gguf):
    import llama_cpp

    model_dir = tiny_model(kind)
    llm = llama_cpp.Llama(str(tiny_gguf(kind)), vocab_only=True, verbose=False)
    for text in TEXTS:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == hf_tokenize(model_dir, text), text
        # and llama.cpp decodes its tokens back to the text
        assert llm.detokenize(hf_tokenize(model_dir, text)).decode().strip() == text.strip() or kind == "llama-spm"
    llm.close()


def test_metadata_special_tokens_and_templates(tiny_gguf):
    import gguf

    def fields(kind):
        reader = gguf.GGUFReader(tiny_gguf(kind))
        return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.tok")
                and k != "tokenizer.ggml.merges" and k != "tokenizer.ggml.scores"}

    spm = fields("llama-spm")
    assert (spm["tokenizer.ggml.model"], spm["tokenizer.ggml.pre"]) == ("llama", "default")
    assert (spm["tokenizer.ggml.bos_token_id"], spm["tokenizer.ggml.eos_token_id"]) == (1, 2)
    assert spm["tokenizer.ggml.add_bos_token"] is True
    bpe = fields("llama-bpe")
    assert (bpe["tokenizer.ggml.model"], bpe["tokenizer.ggml.pre"]) == ("gpt2", "llama-bpe")
    assert bpe["tokenizer.ggml.add_bos_token"] is False
    assert bpe["llama.rope.dimension_count"] == 16 and bpe["llama.attention.head_count_kv"] == 2
    assert fields("qwen2")["tokenizer.ggml.pre"] == "qwen2"
    bloom = fields("bloom")
    assert bloom["tokenizer.ggml.pre"] == "bloom"
    # a BELLE model gets BELLE's training format as its chat template: the very string the app renders
    from belle.app.template_data import BELLE_JINJA

    assert bloom["tokenizer.chat_template"] == BELLE_JINJA
    assert "tokenizer.chat_template" not in bpe


def test_belle_template_renders_belle_training_format():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from belle.quantize.constants import CHAT_TEMPLATES

    env = ImmutableSandboxedEnvironment()
    msgs = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"},
            {"role": "user", "content": "What is 2+2?"}]
    text = env.from_string(CHAT_TEMPLATES["belle"]).render(messages=msgs, add_generation_prompt=True, eos_token="</s>")
    # BELLE train v2 (sample_generator.py): no space after the colon-newline, EOS right after the answer
    assert text == "Human: \n你好\n\nAssistant: \n你好！</s>Human: \nWhat is 2+2?\n\nAssistant: \n"


@pytest.mark.parametrize("outtype,tol", [("f16", 2e-2), ("bf16", 6e-2)])
def test_half_precision_outtypes(outtype, tol, tiny_model, tiny_gguf, tmp_path):
    import gguf

    from belle.quantize.convert import convert

    out = convert(tiny_model("llama-bpe"), tmp_path / f"m.{outtype}.gguf", outtype)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == outtype.upper() and types["blk.0.attn_norm.weight"] == "F32"
    ids = list(range(5, 45))
    ref, got = llama_logits(tiny_gguf("llama-bpe"), ids), llama_logits(out, ids)
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert 0 < rel < tol


def test_sharded_and_bin_checkpoints_give_identical_gguf(tiny_model, tiny_gguf, tmp_path):
    """Sharded safetensors and PyTorch .bin files convert to the same GGUF as a single safetensors."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    from belle.quantize.convert import convert

    src = tiny_model("llama-bpe")
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    def content(path):
        reader = gguf.GGUFReader(path)
        kv = {k: f.contents() for k, f in reader.fields.items() if k != "general.name"}
        return kv, [(t.name, t.tensor_type, t.data.tobytes()) for t in reader.tensors]

    reference = content(tiny_gguf("llama-bpe"))
    for variant in ("sharded", "bin"):
        d = tmp_path / variant
        if variant == "sharded":
            model.save_pretrained(str(d), max_shard_size="100KB")
            assert (d / "model.safetensors.index.json").is_file()
        else:
            d.mkdir()
            torch.save(model.state_dict(), d / "pytorch_model.bin")
            (d / "config.json").write_bytes((src / "config.json").read_bytes())
        for f in ("tokenizer.json", "tokenizer_config.json", "config.json"):
            (d / f).write_bytes((src / f).read_bytes())
        out = convert(d, tmp_path / f"{variant}.gguf", "f32")
        assert content(out) == reference, variant


def test_conversion_streams_one_tensor_at_a_time(tmp_path):
    """Anonymous memory grows by about one tensor, not by the model.

    The checkpoint is bf16 as most real ones are, so every tensor read is widened into a fresh
    anonymous buffer (float32 safetensors would be served straight from the file mapping and
    prove nothing). Holding all tensors at once grows anonymous memory by ~100 MB here.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from belle.quantize.convert import convert

    src = tmp_path / "wide"
    config = LlamaConfig(vocab_size=256, hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
                         num_attention_heads=8, max_position_embeddings=128)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(str(src))
    (src / "tokenizer.json").write_text(json.dumps({
        "model": {"type": "BPE", "vocab": {chr(0x100 + i) if i < 33 else chr(i): i for i in range(256)}, "merges": []},
        "pre_tokenizer": {"type": "ByteLevel", "use_regex": True}, "added_tokens": []}))
    total = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    largest = 512 * 2048 * 4

    def rss_anon() -> int:
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no RssAnon")

    base = rss_anon()
    peak = [base]
    convert(src, tmp_path / "wide.gguf", "f16", progress=lambda i, n, name: peak.append(rss_anon()))
    growth = max(peak) - base
    assert total > 50e6  # bf16 bytes; 100 MB as float32
    assert growth < 4 * largest + 8e6, f"memory grew by {growth / 1e6:.0f} MB for a {total / 1e6:.0f} MB model"


def test_half_precision_encoding_in_row_slices_is_exact(monkeypatch):
    """Big tensors are encoded a slice of rows at a time; the bytes must not change."""
    import gguf

    from belle.quantize import convert as conv

    x = np.random.default_rng(0).normal(size=(1000, 48)).astype(np.float32)
    for qtype in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16):
        whole = conv._encode(x, qtype)
        monkeypatch.setattr(conv, "ENCODE_ROWS", 64)
        sliced = conv._encode(x, qtype)
        monkeypatch.undo()
        assert sliced.dtype == whole.dtype and sliced.shape == whole.shape
        assert sliced.tobytes() == whole.tobytes()


def test_sentencepiece_with_added_pad_token(tiny_model, tmp_path):
    """Chinese-Alpaca style: a SentencePiece model plus a <pad> added on top (added_tokens.json)."""
    import gguf
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM

    from belle.quantize.convert import convert

    src = tiny_model("llama-spm")
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    model.resize_token_embeddings(1001)
    model.config.pad_token_id = 1000
    d = tmp_path / "alpaca"
    model.save_pretrained(str(d))
    (d / "tokenizer.model").write_bytes((src / "tokenizer.model").read_bytes())
    tok_cfg = json.loads((src / "tokenizer_config.json").read_text())
    tok_cfg["pad_token"] = "<pad>"
    (d / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    (d / "added_tokens.json").write_text(json.dumps({"<pad>": 1000}))
    out = convert(d, tmp_path / "alpaca.gguf", "f32")

    reader = gguf.GGUFReader(out)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == 1001 and tokens[1000] == "<pad>" and types[1000] == gguf.TokenType.CONTROL
    assert reader.fields["tokenizer.ggml.padding_token_id"].contents() == 1000
    ids = [1, 500, 20, 1000, 7, 999]
    ref = hf_logits(d, ids)
    got = llama_logits(out, ids)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-3
    llm = llama_cpp.Llama(str(out), vocab_only=True, verbose=False)
    assert llm.tokenize("<pad>".encode(), add_bos=False, special=True) == [1000]
    llm.close()


def test_failure_mid_stream_leaves_no_file(tiny_model, tmp_path, monkeypatch):
    from belle.app.errors import ModelFileError
    from belle.quantize import hf_reader
    from belle.quantize.convert import convert

    real = hf_reader.HFCheckpoint.tensor
    calls = []

    def flaky(self, name):
        calls.append(name)
        if len(calls) == 5:
            raise ModelFileError(f"model.safetensors: cannot read tensor {name} (simulated)")
        return real(self, name)

    monkeypatch.setattr(hf_reader.HFCheckpoint, "tensor", flaky)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ModelFileError, match="simulated"):
        convert(tiny_model("llama-bpe"), out_dir / "o.gguf", "f32")
    assert len(calls) == 5 and list(out_dir.iterdir()) == []
