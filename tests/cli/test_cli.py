"""The `sorth` console script: every command, its --help, its output and its one-line errors.

Most tests call ``sorth.cli.main(argv)`` in-process (one torch/PEFT import for all); a few run the
installed ``sorth`` executable to check the entry point, exit codes and stderr as a user sees them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sorth.orthogonal
from sorth import cli
from sorth.cli import demo as cli_demo

ROOT = Path(__file__).resolve().parents[2]
SORTH = Path(sys.executable).with_name("sorth")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``sorth argv`` run in-process."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


# ------------------------------------------------------------------------------ --help


@pytest.mark.parametrize("command", [None, "inspect", "merge", "plot", "demo"])
def test_help(capsys: pytest.CaptureFixture[str], command: str | None) -> None:
    code, out, _ = run(capsys, *([command] if command else []), "--help")
    assert code == 0
    assert out.startswith(f"usage: sorth{' ' + command if command else ''}")
    if command is None:
        for sub in ("inspect", "merge", "plot", "demo"):
            assert sub in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.startswith("sorth ")


def test_console_script_is_installed_and_errors_are_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    bad = subprocess.run([SORTH, "inspect", missing], capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert bad.stderr == f"sorth inspect: error: adapter folder '{missing}' does not exist\n"


def test_unknown_command_and_missing_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert_one_line_error(*run(capsys, "frobnicate")[::2], "invalid choice")
    assert_one_line_error(*run(capsys, "merge", "--base", "x")[::2], "required")


# ------------------------------------------------------------------------------ inspect


def test_inspect_json_matches_the_adapter(
    capsys: pytest.CaptureFixture[str], adapter_dir: Path
) -> None:
    from safetensors.torch import load_file

    code, out, _ = run(capsys, "inspect", adapter_dir, "--json")
    assert code == 0
    info = json.loads(out)
    saved = load_file(adapter_dir / "adapter_model.safetensors")
    assert info["total_params"] == sum(t.numel() for t in saved.values())
    layers = {e["layer"]: e for e in info["layers"]}
    assert sorted(layers) == sorted(
        f"model.layers.{i}.{m}"
        for i in (0, 1)
        for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
    )
    down = layers["model.layers.0.mlp.down_proj"]
    # in: n = 128, b = 8 < r = 16 -> half dense (b² / n); out: n = 64, b = r = 8 -> dense
    assert (down["in"]["n"], down["in"]["nblocks"], down["in"]["block_size"]) == (128, 16, 8)
    assert down["in"]["density"] == pytest.approx(0.5)
    assert down["out"]["density"] == 1.0
    assert down["in"]["params"] == 2 * 16 * 28  # 2 factors × r blocks × b(b−1)/2
    assert down["scale"] == 64
    v = layers["model.layers.1.self_attn.v_proj"]
    assert (v["out"]["n"], v["out"]["nblocks"]) == (32, 4)  # 2 kv heads × head dim 16
    for entry in info["layers"]:
        keys = [k for k in saved if f".{entry['layer']}." in k]
        assert entry["params"] == sum(saved[k].numel() for k in keys)
        for side in ("in", "out"):
            assert entry[side]["orth_error"] < 1e-5
            assert entry[side]["orth_error_of"] == "dense"


def test_inspect_table(capsys: pytest.CaptureFixture[str], adapter_dir: Path) -> None:
    code, out, _ = run(capsys, "inspect", adapter_dir)
    assert code == 0
    assert "method=double_gsoft structure=gs side=both block_size=8" in out  # the registry name
    assert re.search(r"model\.layers\.0\.mlp\.down_proj\s+in\s+128\s+16×8\s+2\s+896\s+0\.500", out)
    from safetensors.torch import load_file

    total = sum(t.numel() for t in load_file(adapter_dir / "adapter_model.safetensors").values())
    assert f"6 adapted layers, {total:,} adapter parameters; total {total:,}" in out


def test_inspect_measures_orthogonality(
    capsys: pytest.CaptureFixture[str],
    adapter_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A non-orthogonal rotation (Cayley–Neumann far from the identity) is reported as such."""
    bad = tmp_path / "neumann"
    shutil.copytree(adapter_dir, bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    config.update(orthogonal_map="cayley_neumann", neumann_terms=2)
    (bad / "adapter_config.json").write_text(json.dumps(config))

    def worst() -> float:
        code, out, _ = run(capsys, "inspect", bad, "--json")
        assert code == 0
        return max(e[s]["orth_error"] for e in json.loads(out)["layers"] for s in ("in", "out"))

    # blocks whose Neumann bound is useless are solved exactly (Note [neumann fallback])
    assert worst() <= sorth.orthogonal.NEUMANN_MAX_ERROR
    monkeypatch.setattr(sorth.orthogonal, "NEUMANN_MAX_ERROR", None)  # the plain series
    assert worst() > 1e-3


def test_inspect_reports_non_finite_values(
    capsys: pytest.CaptureFixture[str], adapter_dir: Path, tmp_path: Path
) -> None:
    """Regression (issue 14): a nan row, yet 'worst max|QᵀQ−I| = 7.6e-07' and exit status 0."""
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "nan"
    shutil.copytree(adapter_dir, bad)
    tensors = load_file(bad / "adapter_model.safetensors")
    key = sorted(k for k in tensors if "sorth_in" in k)[0]
    tensors[key][0, 0] = float("nan")
    save_file(tensors, bad / "adapter_model.safetensors")
    code, out, err = run(capsys, "inspect", bad)
    assert code == 1
    assert "worst max|QᵀQ−I| = nan" in out
    assert "NOT FINITE: 1 tensor(s)" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "hold NaN or Inf" in lines[0]
    assert key in lines[0]
    code, out, _ = run(capsys, "inspect", bad, "--json")
    assert code == 1
    info = json.loads(out)
    assert info["nonfinite_tensors"] == [key]
    assert info["worst_orth_error"] != info["worst_orth_error"]  # nan
    code, out, err = run(capsys, "inspect", adapter_dir)  # the intact adapter: status 0
    assert code == 0
    assert err == ""


def test_inspect_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, adapter_dir: Path, lora_dir: Path
) -> None:
    assert_one_line_error(*run(capsys, "inspect", tmp_path / "nope")[::2], "does not exist")
    (tmp_path / "file").write_text("x")
    assert_one_line_error(*run(capsys, "inspect", tmp_path / "file")[::2], "is a file")
    assert_one_line_error(*run(capsys, "inspect", tmp_path)[::2], "has no adapter_config.json")
    assert_one_line_error(*run(capsys, "inspect", lora_dir)[::2], "LORA adapter, not a sorth")
    # tensors that do not fit the config: claim storage="full" for skew-stored tensors
    wrong = tmp_path / "wrong"
    shutil.copytree(adapter_dir, wrong)
    config = json.loads((wrong / "adapter_config.json").read_text())
    (wrong / "adapter_config.json").write_text(json.dumps({**config, "structure": "monarch"}))
    assert_one_line_error(*run(capsys, "inspect", wrong)[::2], "does not fit adapter_config.json")
    (wrong / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    assert_one_line_error(*run(capsys, "inspect", wrong)[::2], "cannot read")


# -------------------------------------------------------------------------------- merge

PROBE = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
LOAD_WITHOUT_SORTH = """
import sys, json, torch
sys.modules["sorth"] = None   # importing sorth (or PEFT) now fails
sys.modules["peft"] = None
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
with torch.no_grad():
    print(json.dumps(m(torch.tensor(json.loads(sys.argv[2]))).logits.tolist()))
"""


@pytest.fixture(scope="module")
def merged_dir(
    tmp_path_factory: pytest.TempPathFactory, llama_dir: Path, adapter_dir: Path
) -> Path:
    out = tmp_path_factory.mktemp("merge") / "merged"
    assert cli.main(["merge", "--base", str(llama_dir), "--adapter", str(adapter_dir),
                     "--out", str(out)]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def adapted_logits(llama_dir: Path, adapter_dir: Path) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_dir),
                                        adapter_dir).eval()  # fmt: skip
    base = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    with torch.no_grad():
        expected = adapted(PROBE).logits
        assert (expected - base(PROBE).logits).abs().max() > 1e-3  # the adapter does something
    return expected


def test_merge_writes_a_plain_model(merged_dir: Path, adapted_logits: torch.Tensor) -> None:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    assert (merged_dir / "tokenizer_config.json").is_file()  # non-weight files are copied along
    with safe_open(merged_dir / "model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if "sorth" in k or "base_layer" in k]
    assert not list(merged_dir.parent.glob(".merged*")), "no temporary folder left behind"
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert type(merged).__name__ == "LlamaForCausalLM"
    with torch.no_grad():
        torch.testing.assert_close(merged(PROBE).logits, adapted_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_merged_model_loads_without_sorth_or_peft(
    merged_dir: Path, adapted_logits: torch.Tensor
) -> None:
    plain = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_SORTH, str(merged_dir), json.dumps(PROBE.tolist())],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert plain.returncode == 0, plain.stderr
    got = torch.tensor(json.loads(plain.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(got, adapted_logits, rtol=1e-4, atol=1e-4)


def test_merge_errors(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    llama_dir: Path,
    other_llama_dir: Path,
    adapter_dir: Path,
) -> None:
    def merge(base: Path, adapter: Path, out: Path, *extra: str) -> tuple[int, str]:
        return run(capsys, "merge", "--base", base, "--adapter", adapter, "--out", out, *extra)[::2]

    out = tmp_path / "out"
    assert_one_line_error(*merge(tmp_path / "nope", adapter_dir, out), "base model folder")
    assert_one_line_error(*merge(llama_dir, tmp_path / "nope", out), "adapter folder")
    assert_one_line_error(*merge(adapter_dir, adapter_dir, out), "no config.json")
    assert_one_line_error(*merge(llama_dir, llama_dir, out), "has no adapter_config.json")
    # an adapter saved for hidden size 64 on a model with hidden size 32
    assert_one_line_error(*merge(other_llama_dir, adapter_dir, out), "does not fit")
    assert not out.exists(), "nothing is written when the merge fails"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert_one_line_error(*merge(llama_dir, adapter_dir, out), "already exists", "--overwrite")
    assert merge(llama_dir, adapter_dir, out, "--overwrite")[0] == 0
    assert not (out / "keep.txt").exists()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_merge_overwrite_never_deletes_its_inputs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, llama_dir: Path, adapter_dir: Path
) -> None:
    """Regression (issue 14): --out P --overwrite deleted P, holding P/base and P/adapter."""
    project = tmp_path / "P"
    shutil.copytree(llama_dir, project / "base")
    shutil.copytree(adapter_dir, project / "adapter")
    (project / "notes.txt").write_text("mine")
    before = _tree(project)
    for out in (project, tmp_path):
        code, _, err = run(capsys, "merge", "--base", project / "base", "--adapter",
                           project / "adapter", "--out", out, "--overwrite")  # fmt: skip
        assert_one_line_error(code, err, "contains the base model folder", "another --out")
    code, _, err = run(capsys, "merge", "--base", llama_dir, "--adapter", project / "adapter",
                       "--out", project, "--overwrite")  # fmt: skip
    assert_one_line_error(code, err, "contains the adapter folder")
    assert _tree(project) == before


def test_merge_out_link_with_overwrite_replaces_the_target(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, llama_dir: Path, adapter_dir: Path
) -> None:
    """Regression: --out LINK --overwrite (LINK -> a folder) renamed the link itself: the merged
    model landed next to it as a real folder, the target stayed stale and a `.LINK.old-<pid>`
    link was left behind."""
    target, link = tmp_path / "disk" / "merged", tmp_path / "LINK"
    target.mkdir(parents=True)
    (target / "stale.txt").write_text("old")
    link.symlink_to(target)
    for _ in range(2):
        code, _, err = run(capsys, "merge", "--base", llama_dir, "--adapter", adapter_dir,
                           "--out", link, "--overwrite")  # fmt: skip
        assert code == 0, err
        assert link.is_symlink()
        assert (target / "model.safetensors").is_file()
        assert not (target / "stale.txt").exists()
        leftovers = [p.name for d in (tmp_path, target.parent) for p in d.iterdir()
                     if p.name.startswith(".")]  # fmt: skip
        assert leftovers == []


def test_merge_out_file_with_overwrite_is_refused_first(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, llama_dir: Path, adapter_dir: Path,
    monkeypatch,
) -> None:  # fmt: skip
    """Regression (issue 14): --out FILE --overwrite merged first, then failed with status 1."""
    target = tmp_path / "model.bin"
    target.write_bytes(b"keep")
    monkeypatch.setattr("sorth.cli.merge._load_base", lambda *a: pytest.fail("loaded first"))
    code, _, err = run(capsys, "merge", "--base", llama_dir, "--adapter", adapter_dir,
                       "--out", target, "--overwrite")  # fmt: skip
    assert_one_line_error(code, err, "is a file")
    assert target.read_bytes() == b"keep"


@pytest.mark.slow
def test_merge_a_diffusers_pipeline(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A pipeline folder + per-component adapter folder (as the DreamBooth tutorial saves)."""
    import importlib.util

    from diffusers import UNet2DConditionModel
    from peft import get_peft_model

    import sorth

    spec = importlib.util.spec_from_file_location("db", ROOT / "docs/tutorials/dreambooth.py")
    db = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(db)
    from sorth.integrations import testing

    base = testing.tiny_sd_pipeline(tmp_path / "base")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    config = sorth.SOrthConfig(target_modules=db.TARGETS, nblocks=4, side="both",
                               init_weights=False, init_std=0.3)  # fmt: skip
    adapted = get_peft_model(unet, config).eval()
    adapted.save_pretrained(tmp_path / "adapter" / "unet")
    code, _, err = run(capsys, "merge", "--base", base, "--adapter", tmp_path / "adapter",
                            "--out", tmp_path / "merged")  # fmt: skip
    assert code == 0, err
    merged = UNet2DConditionModel.from_pretrained(tmp_path / "merged", subfolder="unet").eval()
    x, t, cond = torch.randn(1, 4, 16, 16), torch.tensor([10]), torch.randn(1, 8, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            merged(x, t, encoder_hidden_states=cond).sample,
            adapted(x, t, encoder_hidden_states=cond).sample,
            rtol=1e-4, atol=1e-4,
        )  # fmt: skip
    assert (tmp_path / "merged" / "model_index.json").is_file()
    assert (tmp_path / "merged" / "tokenizer").is_dir()
    # inspect reads the per-component layout too
    code, out, _ = run(capsys, "inspect", tmp_path / "adapter", "--json")
    assert code == 0
    info = json.loads(out)["unet"]
    assert len(info["layers"]) == 32  # to_q/k/v/out.0 of the tiny UNet's 8 attention modules
    assert info["total_params"] == sum(p.numel() for p in adapted.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------- plot


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("structure", []),
        ("density", []),
        ("ranks", []),
        ("structure", ["--structure", "butterfly"]),
    ],
)
def test_plot_writes_an_image(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str, extra: list[str]
) -> None:
    import matplotlib.image as mpimg

    out = tmp_path / "sub" / "fig.png"
    args = ["plot", "--n", "64", "--nblocks", "8", "--kind", kind, *extra, "--out", out]
    code, stdout, _ = run(capsys, *args)
    assert code == 0
    assert stdout.strip() == f"wrote {out}"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert min(mpimg.imread(out).shape[:2]) > 100


def test_plot_structure_is_the_docs_figure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`sorth plot --n 64 --nblocks 8` draws exactly the picture shown on the CLI page."""
    out = tmp_path / "fig.png"
    assert run(capsys, "plot", "--n", "64", "--nblocks", "8", "--out", out)[0] == 0
    from sorth.plotting import DOCS_FIGURES, save_figure

    ref = save_figure(DOCS_FIGURES["cli_plot_n64_r8.png"](), tmp_path / "ref.png")
    assert out.read_bytes() == ref.read_bytes()


def test_plot_svg(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "fig.svg"
    assert run(capsys, "plot", "--n", "16", "--block-size", "4", "--out", out)[0] == 0
    assert "<svg" in out.read_text()


def test_plot_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "f.png"
    assert_one_line_error(*run(capsys, "plot", "--n", "64", "--nblocks", "7", "--out", out)[::2],
                          "nblocks=7 must divide n=64")  # fmt: skip
    code, err = run(capsys, "plot", "--n", "64", "--nblocks", "8", "--structure", "oft",
                    "--kind", "ranks", "--out", out)[::2]  # fmt: skip
    assert_one_line_error(code, err, "two factors")
    code, err = run(capsys, "plot", "--n", "8192", "--nblocks", "8", "--out", out)[::2]
    assert_one_line_error(code, err, "too large to draw")
    code, err = run(capsys, "plot", "--n", "64", "--nblocks", "8", "--block-size", "8",
                    "--out", out)[::2]  # fmt: skip
    assert_one_line_error(code, err, "not allowed with argument")
    (tmp_path / "file").write_text("x")
    code, err = run(capsys, "plot", "--n", "16", "--nblocks", "4", "--out",
                    tmp_path / "file" / "f.png")[::2]  # fmt: skip
    assert code in (1, 2)
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_plot_bad_input_is_refused_before_drawing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:
    """Regression (issue 14): --dpi 0 crashed; --kind ranks skipped the size check (2 GB);
    --out <folder> failed after drawing with a temp-file name in the message."""
    import sorth.parametrizations

    def no_build(*args, **kwargs):
        pytest.fail("built the matrix before checking the arguments")

    monkeypatch.setattr(sorth.parametrizations, "GSOrthogonal", no_build)
    out = tmp_path / "f.png"
    base = ("plot", "--nblocks", "8")
    cases = [
        ((*base, "--n", "64", "--dpi", "0", "--out", out), "--dpi=0 is out of range"),
        ((*base, "--n", "64", "--dpi", "-5", "--out", out), "--dpi=-5 is out of range"),
        ((*base, "--n", "16384", "--kind", "ranks", "--out", out), "--n=16384 is too large"),
        ((*base, "--n", "64", "--out", tmp_path), "is a folder; pass an image file name"),
        ((*base, "--n", "64", "--out", tmp_path / "f.txt"), "must end in .png"),
    ]
    for argv, needle in cases:
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, needle)
        assert ".tmp-" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------- demo


def _make_demo_module() -> str:
    """The module the Makefile's `demo` target runs (`python -m X` or `sorth demo`)."""
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo:.*\n((?:\t.*\n)+)", text, re.M)
    assert recipe, "Makefile has no demo target"
    body = recipe.group(1)
    if "sorth demo" in body:
        return cli.demo_entry()
    module = re.search(r"-m\s+([\w.]+)", body)
    assert module, body
    return module.group(1)


def test_demo_runs_the_same_job_as_make_demo() -> None:
    assert cli.demo_entry() == _make_demo_module()


def test_demo_passes_arguments_on(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    """`sorth demo -- ARGS` is `python -m recipes.demo ARGS` in the checkout: one code path."""
    calls = []

    def fake_run(cmd, cwd, check):
        calls.append((cmd, cwd))
        return subprocess.CompletedProcess(cmd, 3)

    monkeypatch.setattr(cli_demo.subprocess, "run", fake_run)
    code, _, err = run(capsys, "demo", "--", "--train_size", "8")
    assert code == 3  # the demo's own exit status
    assert calls == [([sys.executable, "-m", "recipes.demo", "--train_size", "8"], ROOT)]
    assert f"python -m {cli.demo_entry()}" in err


def test_demo_without_a_checkout_says_how_to_get_it(
    capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    """Regression (issue 11): an installed sorth ran a different, core-only demo instead."""
    monkeypatch.setattr(cli_demo, "demo_root", lambda: None)
    monkeypatch.setattr(cli_demo.subprocess, "run", lambda *a, **k: pytest.fail("ran something"))
    code, out, err = run(capsys, "demo")
    assert code == 2
    assert out == ""
    assert_one_line_error(code, err, "make demo")
    assert "python -m recipes.demo" in err


def test_demo_means_the_main_job_only() -> None:
    """One program is called demo: `make demo` = `sorth demo` = `python -m recipes.demo`; the
    core's tour is `python -m sorth.tour` (it was `python -m sorth.demo`)."""
    demos = sorted(
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "sorth").rglob("*demo*")
        if p.suffix == ".py"
    )
    assert demos == ["sorth/cli/demo.py"]  # the `sorth demo` command, which runs recipes.demo
    assert _make_demo_module() == "recipes.demo"


def test_tour_runs(capsys: pytest.CaptureFixture[str]) -> None:
    from sorth import tour

    tour.main(["--sizes", "64", "--block-size", "8", "--tokens", "4", "--repeats", "1"])
    out = capsys.readouterr().out
    assert out.startswith("sorth core tour: block size 8")
    assert "n=64: GS needs 2 factor(s) to be dense" in out


def test_demo_help_is_the_demo_modules_help(capfd: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capfd, "demo", "--", "--help")
    assert code == 0
    assert out.startswith("usage: python -m recipes.demo")


@pytest.mark.slow
def test_merge_a_classifier_adapter_onto_a_bare_encoder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Base saved as BertModel, adapter trained with a 3-label head (task_type SEQ_CLS)."""
    from peft import get_peft_model
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    import sorth

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=4, max_position_embeddings=40)  # fmt: skip
    BertModel(cfg).save_pretrained(tmp_path / "base")  # a bare encoder, like MiniLM
    model = BertForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=3)
    config = sorth.SOrthConfig(target_modules=["query", "value"], block_size=8, task_type="SEQ_CLS",
                               init_weights=False, init_std=0.3)  # fmt: skip
    peft_model = get_peft_model(model, config).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[0, 5, 6, 7, 2]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    code, _, err = run(capsys, "merge", "--base", tmp_path / "base", "--adapter",
                       tmp_path / "adapter", "--out", tmp_path / "merged")  # fmt: skip
    assert code == 0, err
    merged = BertForSequenceClassification.from_pretrained(tmp_path / "merged").eval()
    assert merged.config.num_labels == 3
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=1e-4, atol=1e-4)
