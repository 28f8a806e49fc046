"""Chat template sources, as data. The converter (belle.quantize) writes BELLE_JINJA into GGUF files
trained on BELLE data, so the app and llama.cpp render exactly what BELLE trained on.

BELLE train v2 (LianjiaTech/BELLE train/src/sample_generator.py): a human turn is
"Human: \\n" + text + "\\n\\nAssistant: \\n" (masked), an assistant turn is text + EOS (trained).
No BOS. There is no system role in BELLE data; a system prompt is rendered as a plain preamble.
"""

BELLE_JINJA = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}{{ message['content'] + '\\n\\n' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'Human: \\n' + message['content'] + '\\n\\nAssistant: \\n' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ message['content'] + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

CHATML_JINJA = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)

# name -> (jinja source, extra stop strings, role markers that user text must not be able to forge)
BUILTIN_TEMPLATES = {
    "belle": (BELLE_JINJA, ("\nHuman:",), ("Human:", "Assistant:")),
    "chatml": (CHATML_JINJA, (), ()),
}

# "gguf" means: the model file's own tokenizer.chat_template.
TEMPLATE_NAMES = ("gguf", *BUILTIN_TEMPLATES)
