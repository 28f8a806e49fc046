"""The `flet build apk|ipa` configuration in pyproject.toml ([tool.flet]) and main.py, checked without
the Flutter SDK: the settings a phone build needs are there, the package leaves the toolchains and
weights out, main.py runs from a plain checkout, every library the chat app imports is in the phone's
dependency set, and (where https://pypi.flet.dev can be reached) that set resolves to phone wheels.

How flet build (flet-cli 1.0.5) chooses the phone's packages: [project].dependencies plus
[tool.flet.<platform>].dependencies, installed by serious_python with pip --only-binary=:all: for
the phone's platform tag, from pypi.org and https://pypi.flet.dev, with a sitecustomize.py that makes
platform.system() answer "Android" / "iOS" while pip runs (so `platform_system` markers see the phone)."""

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
FLET = PYPROJECT["tool"]["flet"]
FLET_INDEX = "https://pypi.flet.dev"
PHONE_LLAMA = "0.3.32"  # the llama-cpp-python version Flet's index has phone wheels of
NOT_ON_A_PHONE = {"torch", "transformers", "fastapi", "uvicorn", "peft", "accelerate", "pydantic", "flet-desktop",
                  "flet-web"}
# what flet build's serious_python passes to pip per platform: platform.system() and a wheel tag
PHONES = {"android": ("Android", "android_24_arm64_v8a"), "ios": ("iOS", "ios_13_0_arm64_iphoneos")}


def phone_requirements(platform: str) -> list[Requirement]:
    """The requirement lines flet build hands to pip for this phone, with markers applying to it."""
    system = PHONES[platform][0]
    env = {**default_environment(), "platform_system": system, "python_version": "3.12",
           "python_full_version": "3.12.9", "extra": ""}
    lines = PYPROJECT["project"]["dependencies"] + FLET[platform]["dependencies"]
    return [r for r in map(Requirement, lines) if r.marker is None or r.marker.evaluate(env)]


def _pin(reqs: list[Requirement], name: str) -> str:
    pins = {str(r.specifier) for r in reqs if canonicalize_name(r.name) == name}
    assert len(pins) == 1, f"{name}: {pins}"  # one version, however many lines name it
    return pins.pop()


def test_app_identity_icon_entry_and_permissions():
    for key in ("org", "product", "company", "bundle_id"):
        assert FLET.get(key), f"[tool.flet] {key} is missing"
    assert re.fullmatch(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+", FLET["bundle_id"]), FLET["bundle_id"]
    app = FLET["app"]
    assert (ROOT / app["path"] / f"{app['module']}.py").is_file()
    icon = ROOT / "assets" / "icon.png"  # where flet build looks for the app icon
    assert icon.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert icon.read_bytes() == (ROOT / "assets" / "icons" / "icon.png").read_bytes()
    assert FLET["android"]["permission"]["android.permission.INTERNET"] is True  # model downloads


def _packaged_files() -> list[Path]:
    """The files flet build would put in the app package: the app folder minus [tool.flet.app].exclude
    (relative paths, as serious_python compares them), hidden top-level entries, virtual
    environments and __pycache__ (flet build's default excludes)."""
    app_root = ROOT / FLET["app"]["path"]
    excluded = {os.path.normpath(p) for p in ["build", *FLET["app"]["exclude"]]}
    files = []
    for folder, dirs, names in os.walk(app_root):
        rel = os.path.relpath(folder, app_root)
        keep = []
        for d in dirs:
            path = os.path.normpath(os.path.join(rel, d))
            if path in excluded or d == "__pycache__" or (rel == "." and d.startswith(".")) \
                    or (Path(folder, d, "pyvenv.cfg").exists()):
                continue
            keep.append(d)
        dirs[:] = keep
        files += [Path(folder, n) for n in names
                  if os.path.normpath(os.path.join(rel, n)) not in excluded and not (rel == "." and n.startswith("."))]
    return files


def test_the_package_holds_the_app_and_no_toolchains_or_weights():
    for folder in ("tests", "training", "quantize", "pipeline", "benchmarks", "scripts", "runs", ".cache"):
        assert folder in FLET["app"]["exclude"], folder
    files = [f.relative_to(ROOT).as_posix() for f in _packaged_files()]
    assert "main.py" in files and "app/ui/app.py" in files and "assets/catalog.json" in files
    assert "assets/fonts/NotoSansCJKsc-belle.otf" in files and "assets/icon.png" in files
    tops = {f.split("/")[0] for f in files}
    assert tops <= {"main.py", "app", "assets", "pyproject.toml", "README.md", "LICENSE"}, tops
    weights = [f for f in files if f.endswith((".gguf", ".part", ".safetensors", ".bin", ".pt", ".whl"))]
    assert weights == []
    size = sum((ROOT / f).stat().st_size for f in files)
    assert size < 10 * 2**20, f"the app package would hold {size / 2**20:.1f} MiB of files"


@pytest.mark.parametrize("platform", sorted(PHONES))
def test_phone_dependencies_pin_the_phone_wheels(platform):
    reqs = phone_requirements(platform)
    names = {canonicalize_name(r.name) for r in reqs}
    assert _pin(reqs, "llama-cpp-python") == f"=={PHONE_LLAMA}"  # the computers' 0.3.36 pin is left out
    ui = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"]["ui"]]
    assert _pin(reqs, "flet") == _pin(ui, "flet")
    assert not names & NOT_ON_A_PHONE, names & NOT_ON_A_PHONE
    assert {"numpy", "jinja2", "platformdirs", "tqdm", "gguf"} <= names
    assert ("psutil" in names) == (platform == "android")  # Flet's index: psutil for Android only


def test_this_computer_gets_exactly_one_llama_pin():
    env = {**default_environment(), "extra": ""}
    reqs = [r for r in map(Requirement, PYPROJECT["project"]["dependencies"]) if r.marker is None or r.marker.evaluate(env)]
    assert _pin(reqs, "llama-cpp-python").startswith("==")


def _closure(reqs: list[Requirement], system: str) -> set[str]:
    """Distributions these requirements pull in, from the installed packages' metadata (the computer's
    versions: the llama-cpp-python 0.3.36 installed here declares the same four dependencies as 0.3.32)."""
    seen: set[str] = set()
    todo = [(r, "") for r in reqs]
    while todo:
        req, extra = todo.pop()
        env = {**default_environment(), "platform_system": system, "python_version": "3.12", "extra": extra}
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(req.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [(Requirement(r), e) for r in requires for e in ["", *req.extras]]
    return seen


# The chat app as a phone runs it: main.py from the checkout (its imports only), the engine, and the
# two imports the app defers until a model is loaded (llama_cpp) or its GGUF header read (gguf).
# Imported only inside try/except ImportError: the phone build goes on without them, so they are
# hidden in the check (an import of them raises ImportError, as on the phone).
OPTIONAL = {"sentencepiece": "gguf.vocab", "mistral_common": "gguf.vocab"}
PHONE_OPTIONAL = {"android": {}, "ios": {"psutil": "app/memory.py, app/threads.py"}}  # no iOS wheel
IMPORT_THE_APP = """
import json, runpy, sys, importlib.metadata
before = set(json.loads(sys.argv[1]))
for name in json.loads(sys.argv[2]):
    sys.modules[name] = None  # import raises ImportError
runpy.run_path("main.py", run_name="phone_imports")
import belle.app.engine, belle.app.session, belle.app.models, belle.app.gguf_info, llama_cpp, gguf
tops = {name.split(".")[0] for name, mod in sys.modules.items() if mod is not None} - before
owners = importlib.metadata.packages_distributions()
print(json.dumps(sorted({dist for top in tops for dist in owners.get(top, [])})))
"""


@pytest.mark.parametrize("platform", sorted(PHONES))
def test_every_library_the_app_imports_is_in_the_phone_set(platform):
    bare = subprocess.run([sys.executable, "-c", "import sys, json; print(json.dumps(sorted(sys.modules)))"],
                          capture_output=True, text=True, check=True, cwd=ROOT).stdout
    before = sorted({m.split(".")[0] for m in json.loads(bare)})
    hidden = sorted({*OPTIONAL, *PHONE_OPTIONAL[platform]})
    out = subprocess.run([sys.executable, "-c", IMPORT_THE_APP, json.dumps(before), json.dumps(hidden)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    imported = {canonicalize_name(d) for d in json.loads(out.stdout)} - {"belle"}
    assert {"flet", "llama-cpp-python", "jinja2", "numpy"} <= imported, imported
    missing = imported - _closure(phone_requirements(platform), PHONES[platform][0])
    assert not missing, f"{platform}: the app imports {missing}, which the phone build would not install"


def test_main_runs_from_a_plain_checkout():
    """Without site (so no editable install of belle), with only the third-party packages on the
    path, as in a flet build package: main.py still finds belle.app and belle.assets in its folder."""
    site_packages = [p for p in sys.path if p.endswith("site-packages")]
    code = ("import runpy, sys; runpy.run_path(sys.argv[1], run_name='phone_check'); import belle, belle.app.ui.app;"
            "from importlib import resources; print(belle.__path__[0]); print(resources.files('belle.assets'))")
    out = subprocess.run([sys.executable, "-S", "-c", code, str(ROOT / "main.py")], capture_output=True, text=True,
                         cwd="/", env={**os.environ, "PYTHONPATH": os.pathsep.join(site_packages)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(ROOT), str(ROOT / "assets")]


# As serious_python runs pip for a phone: platform.system() answers the phone's name. pip's wheel-tag
# code then asks platform.android_ver() / ios_ver(), which exist from Python 3.13 on; older Pythons
# running this test get stand-ins (only the API level / iOS version is read).
SITECUSTOMIZE = """import collections, platform
platform.system = lambda: {system!r}
if not hasattr(platform, "android_ver"):
    platform.android_ver = lambda: collections.namedtuple("A", "api_level")(24)
if not hasattr(platform, "ios_ver"):
    platform.ios_ver = lambda: ("iOS", "13.0", "iPhone", False)
"""


def _pip(system: str, args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    site = tmp_path / f"site-{system}"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE.format(system=system))
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.mark.parametrize("platform", sorted(PHONES))
def test_pip_on_a_phone_skips_the_computers_llama_pin(platform, tmp_path):
    """Offline: pip, run as serious_python runs it, drops the 0.3.36 line (nothing to install, no index)."""
    system, tag = PHONES[platform]
    line = next(d for d in PYPROJECT["project"]["dependencies"] if d.startswith("llama-cpp-python"))
    out = _pip(system, ["install", "--dry-run", "--no-index", "--ignore-installed", "--report", "-", "--quiet",
                        "--only-binary=:all:", "--platform", tag, "--target", str(tmp_path / "t"), line], tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["install"] == []


def _flet_index_reachable() -> str | None:
    try:
        with urllib.request.urlopen(f"{FLET_INDEX}/simple/llama-cpp-python/", timeout=5):
            return None
    except OSError as err:
        return str(getattr(err, "reason", err))


@pytest.mark.parametrize("platform", sorted(PHONES))
def test_the_phone_set_resolves_to_phone_wheels(platform, tmp_path):
    why = _flet_index_reachable()
    if why:
        pytest.skip(f"{FLET_INDEX} cannot be reached from this machine ({why}); the phone wheels live there")
    system, tag = PHONES[platform]
    lines = PYPROJECT["project"]["dependencies"] + FLET[platform]["dependencies"]
    out = _pip(system, ["install", "--dry-run", "--ignore-installed", "--report", "-", "--quiet",
                        "--only-binary=:all:", "--platform", tag, "--python-version", "3.12", "--implementation", "cp",
                        "--target", str(tmp_path / "t"), "--index-url", "https://pypi.org/simple",
                        "--extra-index-url", FLET_INDEX, *lines], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    got = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in json.loads(out.stdout)["install"]}
    assert got["llama-cpp-python"] == PHONE_LLAMA, got
    assert got["flet"] == _pin([Requirement(r) for r in FLET[platform]["dependencies"]], "flet").lstrip("=")
    assert not set(got) & NOT_ON_A_PHONE, got
