"""Tokenization and loss masks: properties over random conversations (Chinese and English, odd
whitespace, forged role markers and special tokens), for every data format and template."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from belle.app.errors import SettingsError
from belle.app.templates import ChatMessage
from belle.training.data import index_files
from belle.training.encode import IGNORE, Encoder
from belle.training.formats import Example

# Chinese, English, digits, punctuation, spaces and newlines, plus strings a template uses itself
PIECES = ["你好", "世界", "北京", "。", "，", "hello", " world", "Paris", " ", "  ", "\n", "\n\n", "42", "!",
          "Human:", "Assistant:", "</s>", "<|im_end|>", "<|im_start|>", "assistant", "é"]
text = st.lists(st.sampled_from(PIECES), min_size=1, max_size=8).map("".join).filter(lambda s: s.strip())


@st.composite
def conversations(draw):
    messages = []
    if draw(st.booleans()):
        messages.append(ChatMessage("system", draw(text)))
    for _ in range(draw(st.integers(1, 3))):
        messages += [ChatMessage("user", draw(text)), ChatMessage("assistant", draw(text))]
    return tuple(messages)


def trained_runs(enc) -> list[list[int]]:
    runs, current = [], []
    for token, label in zip(enc.input_ids, enc.labels):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


@pytest.mark.parametrize("template", ["belle", "chatml"])
@settings(max_examples=60, deadline=None)
@given(messages=conversations())
def test_only_replies_and_their_end_token_are_trained(tiny_tokenizer, template, messages):
    encoder = Encoder(tiny_tokenizer, template, 4096)
    enc = encoder.encode(Example(messages=messages))
    replies = [m.content for m in messages if m.role == "assistant"]
    end = "</s>" if template == "belle" else "<|im_end|>"
    runs = trained_runs(enc)
    # one trained run per reply, that decodes to exactly the reply and its end-of-turn token
    assert [tiny_tokenizer.decode(r) for r in runs] == [reply + end for reply in replies]
    assert all(r[-1] == tiny_tokenizer.convert_tokens_to_ids(end) for r in runs)
    # nothing is lost or added: the ids decode to the template's own rendering
    assert tiny_tokenizer.decode(enc.input_ids) == encoder.template.render_text(list(messages), False)
    # what the app sends before each reply is exactly the training prefix before it
    for k, message in enumerate(messages):
        if message.role == "assistant":
            prompt = encoder.prompt_ids(messages[:k])
            assert enc.input_ids[:len(prompt)] == prompt
            # the prompt ends in masked scaffold, and the reply is trained from its first token
            assert enc.labels[len(prompt) - 1] == IGNORE and enc.labels[len(prompt)] != IGNORE


def test_a_template_ending_in_a_space_cannot_swallow_the_first_reply_token(tiny_tokenizer):
    """The bug BELLE hit: "Assistant: " + "the" tokenized together merges the space into " the",
    and masking the prompt then hides the reply's first token."""
    old = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ 'Human: ' + m['content'] + '\\n\\nAssistant: ' }}"
           "{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}")
    tok = tiny_tokenizer
    saved = tok.chat_template
    tok.chat_template = old
    try:
        encoder = Encoder(tok, "base", 256)
    finally:
        tok.chat_template = saved
    enc = encoder.encode(Example(messages=(ChatMessage("user", "Which article?"), ChatMessage("assistant", "the"))))
    joint = tok("Human: Which article?\n\nAssistant: the", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(joint)[-1] == "Ġthe"  # together, the space and the word merge
    runs = trained_runs(enc)
    assert [tok.decode(r) for r in runs] == ["the</s>"]
    assert runs[0][:-1] == tok("the", add_special_tokens=False)["input_ids"]


FORMAT_ROWS = {
    "alpaca.jsonl": [{"instruction": "把这句话翻译成英文", "input": "我爱北京。", "output": "I love Beijing."}],
    "multiturn.jsonl": [{"instruction": "Human:你好\nAssistant:你好！有什么可以帮你？\nHuman:讲个笑话\nAssistant:",
                         "input": "", "output": "好的，从前有座山。"}],
    "conversations.jsonl": [{"conversations": [{"from": "human", "value": "1+1=?"}, {"from": "gpt", "value": "2"},
                                               {"from": "human", "value": "再加一呢？"}, {"from": "gpt", "value": "3"}]}],
    "messages.jsonl": [{"messages": [{"role": "system", "content": "你是 Belle。"}, {"role": "user", "content": "你是谁？"},
                                     {"role": "assistant", "content": "我是 Belle。"}]}],
}


@pytest.mark.parametrize("name", [*FORMAT_ROWS, "chat.tsv", "pretrain.jsonl"])
@pytest.mark.parametrize("template", ["belle", "chatml"])
def test_every_input_format_is_masked_by_role(tiny_tokenizer, tmp_path, name, template):
    path = tmp_path / name
    if name == "chat.tsv":
        path.write_text("今天天气怎么样？\t晴天，适合出门。\n", encoding="utf-8")
    elif name == "pretrain.jsonl":
        path.write_text(json.dumps({"text": "北京是中国的首都。"}, ensure_ascii=False) + "\n", encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in FORMAT_ROWS[name]), encoding="utf-8")
    rows, _ = index_files([path], progress=False)
    example = rows[0]
    enc = Encoder(tiny_tokenizer, template, 512).encode(example)
    if example.text is not None:  # continued pretraining: every token trained, then EOS
        assert enc.labels == enc.input_ids and tiny_tokenizer.decode(enc.input_ids) == "北京是中国的首都。</s>"
        return
    end = "</s>" if template == "belle" else "<|im_end|>"
    replies = [m.content for m in example.messages if m.role == "assistant"]
    assert [tiny_tokenizer.decode(r) for r in trained_runs(enc)] == [r + end for r in replies]
    masked = tiny_tokenizer.decode([t for t, label in zip(enc.input_ids, enc.labels) if label == IGNORE])
    for m in example.messages:
        if m.role != "assistant":
            assert m.content in masked


def test_long_rows_keep_trained_tokens(tiny_tokenizer):
    encoder = Encoder(tiny_tokenizer, "belle", 32)
    long_answer = Example(messages=(ChatMessage("user", "hi"), ChatMessage("assistant", "你好 " * 40)))
    enc = encoder.encode(long_answer)
    assert enc.truncated and len(enc.input_ids) == 32 and enc.labels[0] == IGNORE
    long_prompt = Example(messages=(ChatMessage("user", "问题 " * 60), ChatMessage("assistant", "好的。")))
    enc = encoder.encode(long_prompt)
    assert enc.truncated and len(enc.input_ids) == 32
    assert tiny_tokenizer.decode([t for t, label in zip(enc.input_ids, enc.labels) if label != IGNORE]) == "好的。</s>"


def test_templates_the_tokenizer_cannot_write_are_refused(tiny_tokenizer):
    with pytest.raises(SettingsError, match="no chat template"):
        Encoder(tiny_tokenizer, "base", 64)
    with pytest.raises(SettingsError, match="unknown template 'alpaca'"):
        Encoder(tiny_tokenizer, "alpaca", 64)
    saved = tiny_tokenizer.chat_template
    tiny_tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    try:
        with pytest.raises(SettingsError, match="no end-of-turn token"):
            Encoder(tiny_tokenizer, "base", 64)
    finally:
        tiny_tokenizer.chat_template = saved
