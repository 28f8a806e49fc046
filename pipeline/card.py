"""The model card: the facts of a build, as README.md beside the GGUFs and as GGUF metadata.

The GGUF keys are `belle.card.<field>` strings (the app's `belle models info` and model panel read
them), plus the standard `general.name` / `general.description` / `general.base_model.*` /
`general.dataset.*` keys that other GGUF tools show. Writing them copies the file once with
gguf-py's own metadata copier; the tensors are not touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from belle.app.gguf_info import CARD_FIELDS, CARD_PREFIX  # the app's reader defines the keys and their order


@dataclass
class Card:
    name: str  # the recipe's name
    facts: dict[str, str]  # field -> text, every field of CARD_FIELDS except quantization
    data_names: list[str]
    base_name: str
    recipe_file: str  # the recipe's file name, for README.md


def gguf_metadata(card: Card, qtype: str, quantization: str) -> dict[str, str]:
    """The card facts for one GGUF file, as GGUF string keys."""
    facts = {**card.facts, "quantization": quantization}
    kv = {f"{CARD_PREFIX}{f}": facts[f] for f in CARD_FIELDS if facts.get(f)}
    kv["general.name"] = f"{card.name} {qtype}"
    kv["general.description"] = (f"{card.base_name} fine-tuned on {', '.join(card.data_names)} with belle "
                                 f"({facts.get('template')} template), {quantization}")
    return kv


def write_gguf_card(path: Path, kv: dict[str, str], base_name: str, data_names: list[str]) -> None:
    """Rewrite `path` in place with the card keys added (or replaced), through `path.part`."""
    import gguf
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    path = Path(path)
    string = gguf.GGUFValueType.STRING
    new = {k: MetadataDetails(string, v) for k, v in kv.items()}
    new["general.base_model.count"] = MetadataDetails(gguf.GGUFValueType.UINT32, 1)
    new["general.base_model.0.name"] = MetadataDetails(string, base_name)
    new["general.dataset.count"] = MetadataDetails(gguf.GGUFValueType.UINT32, len(data_names))
    for i, name in enumerate(data_names):
        new[f"general.dataset.{i}.name"] = MetadataDetails(string, name)
    reader = gguf.GGUFReader(path)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    part = path.with_name(path.name + ".part")
    writer = gguf.GGUFWriter(part, arch=arch, endianess=reader.endianess)
    alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = alignment.contents()
    try:
        copy_with_new_metadata(reader, writer, new, remove_metadata=[])
        del reader  # its memory map of the old file
        os.replace(part, path)
    except BaseException:
        writer.close()
        part.unlink(missing_ok=True)
        raise


def render_readme(card: Card, files: list[tuple[str, str, int]], install_names: list[str]) -> str:
    """README.md for the build folder. files: (GGUF file name, quantization text, size in bytes)."""
    f = card.facts
    lines = [f"# {card.name}", "",
             f"Built by `belle build` from `{card.recipe_file}` "
             f"({f.get('built', '')}).", "",
             "| | |", "|---|---|",
             f"| base model | {f.get('base', '')} |",
             f"| data | {f.get('data', '')} |",
             f"| chat template | {f.get('template', '')} (written into every GGUF; the app chats with it) |",
             f"| training | {f.get('training', '')} |"]
    for name, quantization, size in files:
        lines.append(f"| `{name}` | {quantization}, {size / 2**20:.1f} MiB |")
    lines += ["", "## Fidelity", "",
              "Against the f16 model built from the same weights, on held-out text (lower KLD and higher "
              "top-1 agreement are closer to f16):", "", "```", f.get("fidelity", "").rstrip(), "```", ""]
    if install_names:
        lines += ["## Chat with it", "", "The GGUFs are in the app's model list:", "", "```"]
        lines += [f"belle chat -m {n}" for n in install_names]
        lines += ["belle ui            # then pick it in the model panel", "```", ""]
    lines += ["## Recipe", "", "```yaml", f.get("recipe", "").rstrip(), "```", ""]
    return "\n".join(lines)
