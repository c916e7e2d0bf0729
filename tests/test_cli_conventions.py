"""The CLI follows the conventions a practitioner expects (issue 12, points 6-8).

Help with an example per command and usual metavars; --verbose/--quiet after the command; --version;
typo'd targets get the closest name; `targets NAME` prints a profile that loads back; commands that
need torch say which extra to install; every suggested command works as printed; plain, unwrapped,
line-per-step output when it is not a terminal; the pipeline file documented with every option.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import typer

from edge_tl.cli import hoist_global_flags, main
from edge_tl.cli._app import EXAMPLES, app, conventional, version
from edge_tl.pipeline import STEPS, step_keys
from edge_tl.targets import builtin_targets, command, get_target, load_target_file

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = sorted(typer.main.get_command(app).commands)


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_tl", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


# -- help ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_an_example_usual_metavars_and_described_options(
        name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"$ edge-tl {name} " in out, f"{name} --help shows no example"
    assert name in EXAMPLES
    usage = next(line for line in out.splitlines() if line.startswith("Usage:"))
    assert "{" not in usage and "}" not in usage, usage
    columns = [line.strip().split("  ")[0] for line in out.split("Arguments:" if "Arguments:" in out else "Options:",
                                                                 1)[1].splitlines() if line.startswith("  ")]
    assert not [c for c in columns if "<" in c or "{" in c], "a <type> or {name} metavar is shown"
    command = conventional(typer.main.get_command(app).commands[name])  # as --help shows it
    for param in command.params:
        assert (param.help or "").strip(), f"{name}: {param.name} has no description"
    flags = [p for p in command.params if getattr(p, "is_flag", False)]
    for flag in flags:  # a flag shows no metavar: its line is the flag, then the description
        line = next(ln for ln in out.splitlines() if flag.opts[-1] in ln)
        after = line.split(flag.opts[-1], 1)[1]
        assert not re.match(r" [A-Z<]", after), line


def test_help_examples_run_as_printed() -> None:
    """Each example names a real command and only options that command has."""
    group = typer.main.get_command(app)
    for name, examples in EXAMPLES.items():
        assert name in group.commands, f"example for unknown command {name}"
        options = {o for p in group.commands[name].params for o in (*p.opts, *p.secondary_opts)}
        for example in examples:
            words = shlex.split(example.split("&&")[0].split(">")[0])
            assert words[:2] == ["edge-tl", name]
            unknown = [w for w in words if w.startswith("--") and w not in options]
            assert not unknown, f"{example}: {unknown}"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"edge-tl {version()}"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", version())


# -- global flags anywhere -------------------------------------------------------------------------


def test_verbose_after_the_command_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets", "no-such-target"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("error: unknown target")
    for args in (["targets", "no-such-target", "--verbose"], ["targets", "no-such-target", "-v"],
                 ["-v", "targets", "no-such-target"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: unknown target")


def test_quiet_after_a_command_without_its_own_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets", "--quiet"]) == 0
    assert "cpu-onnxruntime-fp32" in capsys.readouterr().out


def test_hoisting_leaves_option_values_and_arguments_after_dashdash_alone() -> None:
    assert hoist_global_flags(["export", "RUN", "--target", "-v"]) == ["export", "RUN", "--target", "-v"]
    assert hoist_global_flags(["export", "RUN", "-t", "x", "-qv"]) == ["-qv", "export", "RUN", "-t", "x"]
    assert hoist_global_flags(["predict", "B", "--", "-v"]) == ["predict", "B", "--", "-v"]
    assert hoist_global_flags(["bench", "RUN", "-q", "--verbose"]) == ["-q", "--verbose", "bench", "RUN"]


# -- targets ---------------------------------------------------------------------------------------


def test_a_typo_in_a_target_name_suggests_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets", "cpu-openvino-int9"]) == 2
    err = capsys.readouterr().err
    assert "did you mean cpu-openvino-int8?" in err
    assert main(["targets", "zzzz"]) == 2
    assert "did you mean" not in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(builtin_targets()))
def test_targets_name_prints_toml_that_loads_back_as_the_same_profile(
        name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets", name]) == 0
    text = capsys.readouterr().out
    original = get_target(name)
    same = tmp_path / f"{name}.toml"
    same.write_text(text)
    assert load_target_file(same).model_dump() == original.model_dump()
    # Saved under another name, the copy is that name (its own folder in RUN/targets/), the rest equal.
    mine = tmp_path / "line3-ort.toml"
    mine.write_text(text)
    loaded = load_target_file(mine)
    assert loaded.name == "line3-ort"
    assert loaded.model_dump() | {"name": name} == original.model_dump()
    assert main(["targets", str(mine), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["name"] == "line3-ort" and shown["source"] == str(mine)


# -- item 6: suggested commands work as printed ----------------------------------------------------


def test_a_user_profile_is_suggested_by_its_path_and_the_command_parses(tmp_path: Path) -> None:
    profile = tmp_path / "my profiles" / "line3.toml"
    profile.parent.mkdir()
    profile.write_text('name = "line3-ort"\nbackend = "onnxruntime"\nprecision = "fp32"\n')
    t = get_target(str(profile))
    assert t.name == "line3-ort" and t.cli_ref == str(profile)
    cmd = command("export", tmp_path / "runs" / "a b", t)
    words = shlex.split(cmd)
    assert words == ["edge-tl", "export", str(tmp_path / "runs" / "a b"), "--target", str(profile)]
    assert get_target(words[4]).model_dump() == t.model_dump()  # --target finds the profile again
    builtin = get_target("cpu-onnxruntime-fp32")
    assert builtin.cli_ref == "cpu-onnxruntime-fp32"
    assert shlex.split(command("bench", "runs/x", builtin))[-1] == "cpu-onnxruntime-fp32"


def _suggested(text: str) -> list[str]:
    found = re.search(r"`(edge-tl [^`]+)`", text)
    assert found, f"no suggested command in: {text}"
    return shlex.split(found.group(1))[1:]


def test_suggested_export_for_an_unexported_user_profile_works_as_printed(
        run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    profile = tmp_path / "my.toml"
    profile.write_text('name = "line3-ort"\nbackend = "onnxruntime"\nprecision = "fp32"\nbatch_size = 4\n')
    assert main(["bundle", str(run_copy), "--target", str(profile), "--out", str(tmp_path / "b")]) == 2
    args = _suggested(capsys.readouterr().err)
    assert main(args) == 0, capsys.readouterr().err
    assert main(["bundle", str(run_copy), "--target", str(profile), "--out", str(tmp_path / "b"),
                 "--allow-failed"]) == 0


# -- item 7: commands that need torch name the extra -----------------------------------------------

_NO_TORCH = """
import sys
for name in ("torch", "torchvision", "torch_pruning"):
    sys.modules[name] = None  # any import of these raises ImportError, as on a device without torch
from edge_tl.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("verb", ["finetune", "run", "prune"])
def test_commands_that_need_torch_say_which_extra_without_a_traceback(verb: str, image_folder: Path,
                                                                      tmp_path: Path) -> None:
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(f'[finetune]\ndata = "{image_folder}"\nout = "{tmp_path / "run"}"\n')
    args = {"finetune": [str(image_folder), "--out", str(tmp_path / "run")], "run": [str(pipeline)],
            "prune": [str(tmp_path / "run")]}[verb]
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, verb, *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr == "error: torch is not installed; install it with: pip install 'edge-tl[train]'\n"
    assert not (tmp_path / "run").exists()


def test_run_reports_a_bad_pipeline_file_before_it_needs_torch(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.toml"
    pipeline.write_text('[finetune]\ndata = "d"\nout = "o"\nepoch = 3\n')
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, "run", str(pipeline)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {pipeline}: key 'finetune.epoch': unknown key; did you mean epochs?"


# -- item 8: output that is not a terminal ---------------------------------------------------------


def test_help_is_not_wrapped_when_piped() -> None:
    proc = _run("finetune", "--help")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    # The whole --resize description on one line (at 80 columns it took eight), and no box drawing.
    assert any(line.strip().startswith("How an image becomes the square input") and "median > 45 %" in line
               for line in lines), proc.stdout
    assert "│" not in proc.stdout and max(map(len, lines)) > 120


_PROGRESS = """
import sys, time
from edge_tl.progress import progress
with progress(False) as bar:
    task = bar.add_task("train (partial)", total=40, info="")
    for i in range(40):
        if i == 20:
            print("HALF WAY", file=sys.stderr, flush=True)
            bar.update(task, info="epoch 2/4 val top-1 0.900")
        bar.advance(task)
with progress(True) as bar:
    task = bar.add_task("silent", total=3, info="")
    bar.advance(task, 3)
"""


def test_progress_prints_plain_lines_as_it_goes_when_not_a_terminal() -> None:
    proc = subprocess.run([sys.executable, "-c", _PROGRESS], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    half = lines.index("HALF WAY")
    before, after = lines[:half], lines[half + 1:]
    assert len(before) >= 4 and all(line.startswith("train (partial): ") for line in before)
    assert any("20/40 (50%)" in line for line in before)  # printed while it ran, not only at the end
    assert "epoch 2/4 val top-1 0.900" in after[0]
    assert after[-1].startswith("train (partial): 40/40 (100%) done in ")
    assert not any("silent" in line for line in lines)
    assert not any("\x1b" in line or "━" in line for line in lines)  # no bar drawing, no colour codes


def test_rich_output_is_not_wrapped_when_piped() -> None:
    code = textwrap.dedent("""
        from edge_tl.progress import console
        console().print("[green]fine-tuned[/] " + "word " * 60 + "END")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.rstrip().endswith("END") and "\x1b" not in proc.stderr


def test_a_stopped_task_says_so() -> None:
    code = textwrap.dedent("""
        from edge_tl.progress import progress
        with progress(False) as bar:
            t = bar.add_task("recover", total=10, info="")
            bar.advance(t, 3)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stderr.splitlines()[-1].startswith("recover: 3/10 (30%) stopped, ")


# -- the pipeline file documents every option ------------------------------------------------------


@pytest.mark.parametrize("step", sorted(STEPS))
def test_every_cli_option_is_a_pipeline_key_and_every_key_is_documented(step: str) -> None:
    command_params = typer.main.get_command(app).commands[step].params
    keys = set(step_keys(step))
    fields = set(STEPS[step].model_fields)
    # The CLI's own: the run it works on (the file's [finetune] out) and --quiet (`edge-tl run --quiet`).
    cli_only = {"run", "quiet"}
    missing = [p.name for p in command_params if p.name not in cli_only and p.name not in fields]
    assert not missing, f"`edge-tl {step}` options with no [{step}] key: {missing}"
    assert fields <= {p.name for p in command_params}, f"[{step}] keys with no `edge-tl {step}` option"
    doc = (ROOT / "docs" / "pipeline.md").read_text()
    section = doc.split(f"## `[{step}]`", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.M))
    assert documented == keys, f"[{step}]: undocumented {keys - documented}, stale {documented - keys}"


def test_the_example_pipeline_loads(tmp_path: Path) -> None:
    from edge_tl.pipeline import load_pipeline

    for path in (ROOT / "examples").glob("*.toml"):
        load_pipeline(path)
    doc = (ROOT / "docs" / "pipeline.md").read_text()
    block = doc.split("```toml", 1)[1].split("```", 1)[0]
    (tmp_path / "p.toml").write_text(block)
    p = load_pipeline(tmp_path / "p.toml")
    assert p.prune is not None and p.prune.ratio == 0.3 and p.bundle is not None


def test_version_from_the_module_entry_point() -> None:
    proc = _run("--version")
    assert proc.returncode == 0 and proc.stdout == f"edge-tl {version()}\n"
