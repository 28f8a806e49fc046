"""GPTQ over a whole model, block by block, written as a GGUF by the converter.

1. The checkpoint's tensors are planned by the converter and each gets the type llama.cpp's recipe
   would give it (recipes.tensor_types).
2. The model is built on the `meta` device; only the part being worked on is ever loaded: the
   embeddings, one transformer block, the output head. Memory stays at one block plus the
   calibration activations (kept on the CPU), so a 7B model fits a 24 GB machine.
3. The token embedding (a lookup: no Hessian) is rounded to nearest on the grid. The calibration
   activations then run through block i with blocks < i already quantized. Inside a block the
   linears are done in the order data flows (q/k/v, then o, then gate/up, then down), each group's
   Hessian collected by hooks with the groups before it already quantized. An untied output head
   gets GPTQ on the final norm's output.
4. Each finished block is saved in `OUT.gptq/` (codes and scales, atomically); the same command
   resumes from there after an interrupt, regenerating the activations through the saved blocks.
   The work folder carries a key of everything that changes the result, so a different model,
   type, calibration or setting never reuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from belle.app.errors import BelleError, InputError, ModelFileError

log = logging.getLogger(__name__)

WORK_VERSION = 1  # bump when the saved block format or the algorithm changes

# Where each architecture keeps its parts (transformers module names), and the linears of a block
# in data-flow order: each inner list shares one input, so one Hessian pass serves it.
LAYOUT = {
    "llama": dict(embed=["model.embed_tokens"], layers="model.layers", norm="model.norm",
                  sequential=[["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                              ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]),
    "bloom": dict(embed=["transformer.word_embeddings", "transformer.word_embeddings_layernorm"],
                  layers="transformer.h", norm="transformer.ln_f",
                  sequential=[["self_attention.query_key_value"], ["self_attention.dense"],
                              ["mlp.dense_h_to_4h"], ["mlp.dense_4h_to_h"]]),
}
LAYOUT["qwen2"] = LAYOUT["llama"]

Progress = Callable[[int, int, str], None]  # (blocks done, total, what)


@dataclass
class GPTQSettings:
    recipe: str
    damp: float = 0.01
    act_order: bool = True  # measured on the default model: Q4_0 mean KLD 0.115 with, 0.201 without
    samples: int | None = None  # None: every whole chunk of the calibration text, at most MAX_SAMPLES
    seqlen: int = 512
    device: str = "cpu"
    output_type: str | None = None
    embd_type: str | None = None

    def key(self) -> dict:
        return {k: getattr(self, k) for k in ("recipe", "damp", "act_order", "samples", "seqlen", "output_type",
                                              "embd_type")}


MAX_SAMPLES = 128


@dataclass
class GPTQReport:
    path: Path
    seconds: float
    types: dict[str, str]
    samples: int
    resumed_blocks: int
    losses: dict[str, float] = field(default_factory=dict)


class _Stop(Exception):
    """Raised inside block 0 once its inputs are captured."""


# --- input ------------------------------------------------------------------------------------

def check_source(model: Path) -> None:
    """An HF folder, or a GGUF whose weights are F32/F16/BF16 (GPTQ needs the unquantized weights)."""
    model = Path(model)
    if model.is_dir():
        if not (model / "config.json").is_file():
            raise ModelFileError(f"{model}: no config.json (not a Hugging Face model folder)")
        return
    if not model.is_file():
        raise ModelFileError(f"{model}: no such file or folder")
    from .llama_quantize import check_gguf

    check_gguf(model)
    import gguf

    reader = gguf.GGUFReader(model)
    float_types = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16}
    quantized = sorted({t.tensor_type.name for t in reader.tensors if t.tensor_type not in float_types})
    if quantized:
        raise ModelFileError(f"{model}: already quantized ({', '.join(quantized)}); GPTQ needs F32, F16 or BF16 "
                             f"weights (convert the original checkpoint, or dequantize to F32 first)")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _source_identity(model: Path) -> dict:
    """Cheap identity of the input: names, sizes and mtimes of its files."""
    files = sorted(p for p in (model.iterdir() if model.is_dir() else [model]) if p.is_file())
    return {p.name: [p.stat().st_size, int(p.stat().st_mtime)] for p in files}


def calibration_samples(model_dir: Path, calib: Path, samples: int | None, seqlen: int) -> list[list[int]]:
    from transformers import AutoTokenizer

    from .textdata import chunk_tokens, load_text

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tok.encode(load_text(calib), add_special_tokens=False)
    bos = tok.bos_token_id if getattr(tok, "add_bos_token", False) else None
    chunks = chunk_tokens(ids, seqlen, bos)
    if samples is not None and len(chunks) < samples:
        raise InputError(f"{calib}: {len(ids)} tokens give {len(chunks)} samples of {seqlen}, fewer than the "
                         f"{samples} asked for (use a longer file, fewer samples: --chunks, or shorter ones: --ctx)")
    if not chunks:
        raise InputError(f"{calib}: {len(ids)} tokens, shorter than one sample of {seqlen}")
    return chunks[: samples or MAX_SAMPLES]


# --- the model, one part at a time --------------------------------------------------------------

def _skeleton(model_dir: Path, device):
    """The model on the meta device (no memory), with the rotary tables built for real."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    for name, mod in list(model.named_modules()):
        if name and any(b.is_meta for b in mod.buffers(recurse=False)):
            # only computed buffers (rotary inv_freq) live outside the checkpoint: build them again
            with torch.device("cpu"):
                new = type(mod)(config=model.config).to(device)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


class _Weights:
    """Loads a module's parameters from the checkpoint on demand (model name -> checkpoint name)."""

    def __init__(self, ckpt, strip_prefix: str, tied: dict[str, str]):
        self.ckpt, self.strip, self.tied = ckpt, strip_prefix, tied

    def name(self, full: str) -> str:
        full = self.tied.get(full, full)
        if full in self.ckpt.entries:
            return full
        if self.strip and full.startswith(self.strip) and full[len(self.strip):] in self.ckpt.entries:
            return full[len(self.strip):]
        if self.strip and self.strip + full in self.ckpt.entries:
            return self.strip + full
        raise ModelFileError(f"{self.ckpt.model_dir}: checkpoint has no tensor {full}")

    def load(self, module, prefix: str, device) -> None:
        import torch

        state = {n: torch.from_numpy(np.ascontiguousarray(self.ckpt.tensor(self.name(f"{prefix}.{n}"))))
                 for n, _ in module.named_parameters()}
        module.load_state_dict({n: t.to(device) for n, t in state.items()}, assign=True, strict=True)


def _release(module) -> None:
    module.to("meta")


# --- the work folder ------------------------------------------------------------------------

def _save_codes(path: Path, results: dict) -> None:
    """{checkpoint name: BlockCodes} -> one .npz, written to a temp file and renamed."""
    arrays = {}
    for name, bc in results.items():
        arrays[f"{name}|qtype"] = np.array(int(bc.qtype))
        for f in ("codes", "d", "m", "dmin", "scales", "mins"):
            v = getattr(bc, f)
            if v is not None:
                arrays[f"{name}|{f}"] = v
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def _load_codes(path: Path) -> dict:
    from gguf import GGMLQuantizationType

    from .ggml_pack import BlockCodes

    out: dict[str, dict] = {}
    with np.load(path) as z:
        for key in z.files:
            name, f = key.rsplit("|", 1)
            out.setdefault(name, {})[f] = z[key]
    return {n: BlockCodes(qtype=GGMLQuantizationType(int(v.pop("qtype"))), **v) for n, v in out.items()}


# --- the run ----------------------------------------------------------------------------------

def quantize_gptq(model: Path, out: Path, settings: GPTQSettings, calib: Path, *, force: bool = False,
                  progress: Progress | None = None, keep_work: bool = False) -> GPTQReport:
    """GPTQ-quantize `model` (HF folder or float GGUF) into the GGUF `out` with llama.cpp's recipe types."""
    import torch

    from .constants import GPTQ_TYPES

    model, out, calib = Path(model), Path(out), Path(calib)
    if settings.recipe not in GPTQ_TYPES:
        raise BelleError(f"--type {settings.recipe!r}: choose one of {', '.join(GPTQ_TYPES)}")
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise BelleError("--device cuda: no CUDA GPU is visible to torch")
    check_source(model)
    if out.exists() and not force:
        raise BelleError(f"{out}: already exists (use --force to overwrite)")
    if not out.parent.is_dir():
        raise BelleError(f"{out.parent}: output directory does not exist")
    if not calib.is_file():
        raise InputError(f"{calib}: no such calibration file")

    start = time.perf_counter()
    work = out.with_name(out.name + ".gptq")
    key = {"version": WORK_VERSION, "source": _source_identity(model), "calibration": file_sha256(calib),
           "settings": settings.key()}
    work = _open_work(work, key)
    tmp_hf = None
    try:
        if model.is_dir():
            model_dir = model
        else:  # float GGUF -> HF folder through transformers' loader, once, kept in the work folder
            model_dir = work / "hf"
            if not (model_dir / "config.json").is_file():
                from .gguf_to_hf import gguf_to_hf_dir

                tmp_hf = work / "hf.part"
                shutil.rmtree(tmp_hf, ignore_errors=True)
                gguf_to_hf_dir(model, tmp_hf)
                os.replace(tmp_hf, model_dir)
                tmp_hf = None
        report = _run(model_dir, out, work, settings, calib, key["calibration"], force=force, progress=progress)
    except BelleError:
        if not any(work.glob("*.npz")):  # failed before any work worth keeping: leave nothing behind
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        if tmp_hf is not None:
            shutil.rmtree(tmp_hf, ignore_errors=True)
    report.seconds = time.perf_counter() - start
    if not keep_work:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _open_work(work: Path, key: dict) -> Path:
    manifest = work / "key.json"
    if work.exists():
        try:
            same = json.loads(manifest.read_text()) == key
        except (OSError, ValueError):
            same = False
        if not same:
            log.info("%s: from a different model or settings; starting over", work)
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not manifest.exists():
        manifest.write_text(json.dumps(key, indent=1))
    return work


def _run(model_dir: Path, out: Path, work: Path, st: GPTQSettings, calib: Path, cal_hash: str, *, force: bool,
         progress: Progress | None) -> GPTQReport:
    import torch
    from gguf import GGMLQuantizationType

    from .arch import get_arch, need
    from .convert import convert, plan_tensors
    from .ggml_pack import dequantize, pack
    from .gptq import Hessian, gptq_quantize, rtn_quantize
    from .hf_reader import HFCheckpoint
    from .recipes import recipe_ftype, tensor_types

    device = torch.device(st.device)
    float_types = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)
    with HFCheckpoint(model_dir) as ckpt:
        cfg = ckpt.config
        arch = get_arch(cfg, str(model_dir / "config.json"))
        layout = LAYOUT[arch.model_type]
        plan = plan_tensors(ckpt, arch, "f32")
        n_layer = need(cfg, "num_hidden_layers", "n_layer")
        types = tensor_types([(t.gguf_name, t.shape) for t in plan], arch.gguf_arch.name.lower(), n_layer,
                             st.recipe, output_type=st.output_type, embd_type=st.embd_type, imatrix=True)
        by_ckpt = {t.hf_name: t for t in plan}
        samples = calibration_samples(model_dir, calib, st.samples, st.seqlen)

        model = _skeleton(model_dir, device)
        tied = {}
        if getattr(model.config, "tie_word_embeddings", False) or "lm_head.weight" not in ckpt.entries:
            tied["lm_head.weight"] = f"{layout['embed'][0]}.weight"
        weights = _Weights(ckpt, arch.strip_prefix, tied)
        done: dict[str, object] = {}  # checkpoint name -> BlockCodes
        losses: dict[str, float] = {}

        def qtype_of(full_name: str):
            t = by_ckpt.get(weights.name(full_name))
            return (t, types.get(t.gguf_name, t.qtype)) if t else (None, None)

        def set_weight(module, bc) -> None:
            module.weight = torch.nn.Parameter(torch.from_numpy(dequantize(bc)).to(device), requires_grad=False)

        # 1. embeddings (round to nearest on the grid: a lookup has no Hessian)
        for path in layout["embed"]:
            weights.load(model.get_submodule(path), path, device)
        embed = model.get_submodule(layout["embed"][0])
        emb_file = work / "embed.npz"
        t_emb, q_emb = qtype_of(f"{layout['embed'][0]}.weight")
        if q_emb not in float_types:
            if emb_file.exists():
                done.update(_load_codes(emb_file))
            else:
                res = rtn_quantize(embed.weight.data, q_emb)
                done[t_emb.hf_name] = res.block_codes(q_emb)
                _save_codes(emb_file, {t_emb.hf_name: done[t_emb.hf_name]})
            set_weight(embed, done[t_emb.hf_name])

        # 2. inputs of block 0, captured by stopping there
        layers = model.get_submodule(layout["layers"])
        captured: list = []

        def catch(_mod, args, kwargs):
            captured.append((args[0].detach().to("cpu"), kwargs))
            raise _Stop

        handle = layers[0].register_forward_pre_hook(catch, with_kwargs=True)
        try:
            with torch.no_grad():
                for ids in samples:
                    try:
                        model(torch.tensor([ids], device=device), use_cache=False)
                    except _Stop:
                        pass
        finally:
            handle.remove()
        xs = [c[0] for c in captured]
        kwargs = captured[0][1]

        def run_layer(layer, xs_in):
            outs = []
            with torch.no_grad():
                for x in xs_in:
                    y = layer(x.to(device), **kwargs)
                    outs.append((y[0] if isinstance(y, tuple) else y).detach().to("cpu"))
            return outs

        # 3. blocks in order
        resumed = 0
        for i in range(len(layers)):
            layer = layers[i]
            prefix = f"{layout['layers']}.{i}"
            weights.load(layer, prefix, device)
            block_file = work / f"blk.{i}.npz"
            if block_file.exists():
                saved = _load_codes(block_file)
                for name, bc in saved.items():
                    set_weight(layer.get_submodule(_local(weights, name, prefix)), bc)
                done.update(saved)
                resumed += 1
            else:
                results = {}
                t0 = time.perf_counter()
                for group in _groups(layer, layout["sequential"]):
                    hess = {n: Hessian(layer.get_submodule(n).in_features, device) for n in group}
                    hooks = [layer.get_submodule(n).register_forward_pre_hook(
                        lambda _m, a, n=n: hess[n].add(a[0])) for n in group]
                    try:
                        run_layer(layer, xs)
                    finally:
                        for h in hooks:
                            h.remove()
                    for n in group:
                        lin = layer.get_submodule(n)
                        t, qt = qtype_of(f"{prefix}.{n}.weight")
                        if qt in float_types:
                            continue
                        res = gptq_quantize(lin.weight.data, hess[n].H, qt, damp=st.damp, act_order=st.act_order)
                        bc = res.block_codes(qt)
                        results[t.hf_name] = bc
                        losses[t.gguf_name] = res.loss
                        set_weight(lin, bc)
                    del hess
                _save_codes(block_file, results)
                done.update(results)
                log.info("block %d: %d tensors in %.1f s", i, len(results), time.perf_counter() - t0)
            xs = run_layer(layer, xs)
            _release(layer)
            if progress:
                progress(i + 1, len(layers) + 1, f"blk.{i}")

        # 4. the output head, when it is a tensor of its own
        head_name = "lm_head.weight"
        t_out = by_ckpt.get(head_name) if "lm_head.weight" not in tied else None
        if t_out is not None and types.get(t_out.gguf_name) not in float_types:
            head_file = work / "output.npz"
            if head_file.exists():
                done.update(_load_codes(head_file))
            else:
                qt = types[t_out.gguf_name]
                norm = model.get_submodule(layout["norm"])
                weights.load(norm, layout["norm"], device)
                hess = Hessian(norm.weight.shape[0], device)
                with torch.no_grad():
                    for x in xs:
                        hess.add(norm(x.to(device)))
                W = torch.from_numpy(np.ascontiguousarray(ckpt.tensor(t_out.hf_name))).to(device)
                res = gptq_quantize(W, hess.H, qt, damp=st.damp, act_order=st.act_order)
                done[t_out.hf_name] = res.block_codes(qt)
                losses[t_out.gguf_name] = res.loss
                _save_codes(head_file, {t_out.hf_name: done[t_out.hf_name]})
        if progress:
            progress(len(layers) + 1, len(layers) + 1, "output")

        missing = [t.gguf_name for t in plan if types.get(t.gguf_name, t.qtype) not in float_types
                   and t.hf_name not in done]
        if missing:
            raise BelleError(f"GPTQ did not produce {', '.join(missing[:3])} (unsupported layout for this architecture)")


    def extra(writer) -> None:
        writer.add_string("quantize.method", "gptq")
        writer.add_string("quantize.gptq.recipe", st.recipe)
        writer.add_string("quantize.gptq.calibration.file", calib.name)
        writer.add_string("quantize.gptq.calibration.sha256", cal_hash)
        writer.add_uint32("quantize.gptq.calibration.samples", len(samples))
        writer.add_uint32("quantize.gptq.calibration.sample_tokens", st.seqlen)
        writer.add_float32("quantize.gptq.damp", st.damp)
        writer.add_bool("quantize.gptq.act_order", st.act_order)
        writer.add_string("quantize.gptq.group_order", "act-order, scales fixed before the sweep" if st.act_order
                          else "natural, scales fixed when the sweep enters a block")
        writer.add_string("quantize.gptq.scale_search", "diag(H)-weighted")

    def packed(t) -> np.ndarray:
        return pack(done[t.hf_name])

    qtypes = {t.gguf_name: types.get(t.gguf_name, t.qtype) for t in plan}
    convert(model_dir, out, "f32", force=force, types=qtypes,
            packed=packed, file_type=recipe_ftype(st.recipe), extra_kv=extra)
    return GPTQReport(out, 0.0, {k: v.name for k, v in qtypes.items()}, len(samples), resumed, losses)


def _local(weights: _Weights, ckpt_name: str, prefix: str) -> str:
    """Checkpoint tensor name -> module path inside the block ("self_attn.q_proj")."""
    for cand in (ckpt_name, weights.strip + ckpt_name):
        if cand.startswith(prefix + "."):
            return cand[len(prefix) + 1: -len(".weight")]
    raise ModelFileError(f"{ckpt_name}: not in {prefix}")


def _groups(layer, sequential: list[list[str]]) -> list[list[str]]:
    """The block's linears in data-flow order; any the table does not name go last, together."""
    import torch

    linears = [n for n, m in layer.named_modules() if isinstance(m, torch.nn.Linear)]
    named = [[n for n in g if n in linears] for g in sequential]
    rest = [n for n in linears if not any(n in g for g in named)]
    return [g for g in named if g] + ([rest] if rest else [])
