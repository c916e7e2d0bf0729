"""One settings model per stage (issue 25): the CLI, the pipeline file and the API take the same options
from ``edge_tl.settings``, refuse the same values, and name the option the way each front door spells it."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from edge_tl import api
from edge_tl.cli import main
from edge_tl.cli._app import app
from edge_tl.errors import ConfigError
from edge_tl.pipeline import load_pipeline
from edge_tl.settings import STAGES, ExportSettings, FinetuneSettings, key_of_flag


def test_the_three_front_doors_refuse_the_same_value_naming_it_their_way(
        image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", str(image_folder), "--out", str(tmp_path / "r"), "--mode", "sideways"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --mode: unknown value 'sideways'; choose 'linear', 'partial' or 'full'", err
    pipeline = tmp_path / "p.toml"
    pipeline.write_text(f'[finetune]\ndata = "{image_folder}"\nout = "run"\nmode = "sideways"\n')
    with pytest.raises(ConfigError, match=r"key 'finetune\.mode'"):
        load_pipeline(pipeline)
    with pytest.raises(ConfigError, match="option 'mode': unknown value 'sideways'"):
        api.finetune(image_folder, tmp_path / "r", mode="sideways")
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_limits_live_in_the_model_and_hold_everywhere(image_folder: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", str(image_folder), "--out", str(tmp_path / "r"), "--batch-size", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: --batch-size: Input should be greater than or equal to 1")
    with pytest.raises(ConfigError, match="option 'ratio': Input should be less than 1"):
        api.prune(tmp_path / "r", 1.5)
    with pytest.raises(ConfigError, match="option 'epoch': unknown option; did you mean option 'epochs'"):
        api.finetune(image_folder, tmp_path / "r", epoch=3)


def test_every_field_is_an_option_with_the_models_default() -> None:
    group = typer.main.get_command(app)
    for stage, model in STAGES.items():
        params = {p.name: p for p in group.commands[stage].params}
        for name, field in model.model_fields.items():
            assert name in params, f"{stage}: {name} is no option"
            if not field.is_required():
                assert params[name].default == field.default, (stage, name)


def test_cli_spellings_map_back_to_the_file_keys() -> None:
    assert key_of_flag(STAGES["bundle"], "--ok-class") == "ok_classes"
    assert key_of_flag(STAGES["bundle"], "--no-ood") == "ood"
    assert key_of_flag(ExportSettings, "--from") == "source"
    assert key_of_flag(STAGES["bench"], "--json") == "json"
    assert key_of_flag(FinetuneSettings, "--nonsense") is None
