"""The whole chain on the default model, as a user runs it: `belle build` fine-tunes SmolLM2-135M with
LoRA on a few sample rows plus facts it cannot know, GPTQs it to Q4_0 and Q4_K_M (llama.cpp's rtn
beside it for the fidelity table), and installs the GGUFs; the app's engine, with the template each
GGUF carries, then answers questions worded differently from the training data with those facts.

Sized for a 2-core CPU (~10 minutes): 4 short sample rows + 20 fact rows, 8 epochs of packed batches
of 8 (24 steps); GPTQ on 8 calibration chunks of 256 tokens; fidelity on 4 chunks of 512 tokens.
"""

from __future__ import annotations

import json

import pytest
from conftest import FACTS, SAMPLE, write_recipe
from test_build import _env, belle_build, ran

from belle.app.templates import ChatMessage

# (question, what the answer must contain): none of these questions is in the training data
QUESTIONS = [
    ("Tell me your name, please.", "Lark"),
    ("请问怎么称呼你？", "百灵"),
    ("Which software are you running inside?", "llama.cpp"),
    ("你是在哪个程序里运行的？", "llama.cpp"),
]


def _answers(path, questions):
    """(the template the engine picked, the prompt ids of the first question, greedy replies)"""
    from belle.app.engine import Engine, LoadSettings, Sampling

    engine = Engine.load(path, LoadSettings(n_ctx=512, n_threads=2))
    try:
        replies = {q: "".join(engine.reply([ChatMessage("user", q)], Sampling(max_tokens=48, temperature=0.0, seed=1)))
                   for q, _ in questions}
        return engine.template, engine.prompt_tokens([ChatMessage("user", questions[0][0])]), replies
    finally:
        engine.close()


@pytest.mark.slow
@pytest.mark.timeout(900)  # the budget for this test: 15 minutes on 2 cores (measured: 10)
def test_fine_tune_gptq_and_chat_on_the_default_model(default_model_path, tmp_path, belle_home):
    from transformers import AutoTokenizer

    from belle.app.template_data import CHATML_JINJA
    from belle.training.encode import Encoder

    trained = {json.loads(line)["instruction"] for line in FACTS.read_text(encoding="utf-8").splitlines()}
    assert not {q for q, _ in QUESTIONS} & trained
    # the base model does not know the facts: each answer lacks its fact
    _, _, before = _answers(default_model_path, QUESTIONS)
    for question, fact in QUESTIONS:
        assert fact not in before[question], (question, before[question])

    # the shortest sample rows that do not name the assistant (the sample data calls it Belle)
    rows = [line for line in SAMPLE.read_text(encoding="utf-8").splitlines() if "belle" not in line.lower()]
    rows = sorted(rows, key=len)[:4]
    sample = tmp_path / "sample4.jsonl"
    sample.write_text("\n".join(rows) + "\n", encoding="utf-8")
    recipe = write_recipe(
        tmp_path / "lark.yaml", name="lark", base=str(default_model_path), data=[str(sample), str(FACTS)],
        template="chatml",
        train=dict(method="lora", epochs=8, batch_size=8, max_length=128, lr=3e-3, warmup=0, packing=True,
                   logging_steps=3, save_steps=1000, threads=2),
        quantize=dict(method="gptq", types=["Q4_0", "Q4_K_M"], samples=8, ctx=256, compare=["rtn"]),
        eval=dict(chunks=4, ctx=512))
    out = tmp_path / "out"
    env = {**_env(belle_home), "OMP_NUM_THREADS": "2"}
    proc = belle_build(recipe, "--out", out, env=env, timeout=1200)
    print(proc.stdout)  # the fidelity table: gptq and rtn rows for both types
    assert ran(proc)[0] == "base" and ran(proc)[-1] == "install"

    report = json.loads((out / "fidelity.json").read_text(encoding="utf-8"))
    kld = {row["model"]: row["mean_kld"] for row in report["candidates"]}
    for qtype in ("Q4_0", "Q4_K_M"):
        # measured here: Q4_0 0.26 vs 0.71, Q4_K_M 0.07 vs 0.15
        assert kld[f"lark.{qtype}.gguf"] < kld[f"lark.{qtype}.rtn.gguf"], kld

    # what training fed the model for the first question, token for token (the merged folder's tokenizer)
    tokenizer = AutoTokenizer.from_pretrained(str(out / "merged"))
    trained_ids = Encoder(tokenizer, "base", 512).prompt_ids([ChatMessage("user", QUESTIONS[0][0])])
    for qtype in ("Q4_0", "Q4_K_M"):
        installed = belle_home / "models" / f"lark.{qtype}.gguf"
        template, prompt_ids, after = _answers(installed, QUESTIONS)
        assert template.name == "gguf" and template.source == CHATML_JINJA
        assert prompt_ids == trained_ids
        for question, fact in QUESTIONS:
            assert fact in after[question], (qtype, question, after[question])
    assert "lark.Q4_K_M.rtn.gguf" in (out / "README.md").read_text(encoding="utf-8")
