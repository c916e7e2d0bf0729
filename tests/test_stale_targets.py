"""Issue 24 item 4: a target exported before the run's model was replaced is refused by bench and bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_tl.cli import main
from edge_tl.errors import ArtifactError
from edge_tl.rundir import RunDir

TARGET = "cpu-onnxruntime-fp32"


@pytest.fixture(scope="module")
def stale_run(finetuned_run: Path, image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run with a target exported, then fine-tuned again (another seed: another model.pt)."""
    import shutil

    from edge_tl.stages.export import export
    from edge_tl.stages.finetune import finetune
    from edge_tl.training import TrainConfig

    dest = tmp_path_factory.mktemp("stale") / "run"
    shutil.copytree(finetuned_run, dest)
    export(dest, TARGET, ood=False)
    RunDir(dest).check_fresh(RunDir(dest).target(TARGET))  # fresh right after the export
    finetune(image_folder, dest, train_cfg=TrainConfig(mode="linear", epochs=2, seed=1, quiet=True, workers=0))
    return dest


def test_stale_target_is_refused_by_bench_and_bundle(stale_run: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from edge_tl.bench.run import bench
    from edge_tl.stages.bundle import bundle

    manifest = json.loads((stale_run / "targets" / TARGET / "manifest.json").read_text())
    assert Path(manifest["parent"]["path"]).parent.name == "finetune"
    with pytest.raises(ArtifactError, match=rf"older finetune model.*`edge-tl export \S+ --target {TARGET}`"):
        bench(stale_run, [TARGET])
    assert not (stale_run / "reports" / f"{TARGET}.json").exists()
    # refused before the evaluation set's preprocessing (the new fine-tune dropped the old eval.npz)
    assert not RunDir(stale_run).eval_npz.exists()
    with pytest.raises(ArtifactError, match="older finetune model"):
        bundle(stale_run, TARGET, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    # The CLI: one line, exit 2 (not 1, which means a failed gate).
    capsys.readouterr()
    assert main(["bundle", str(stale_run), "--target", TARGET, "--out", str(tmp_path / "b")]) == 2
    assert main(["bench", str(stale_run), "--target", TARGET]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 2 and all(f"edge-tl export {stale_run} --target {TARGET}" in e for e in err)


def test_re_export_after_a_new_finetune_is_judged_against_the_new_model(stale_run: Path, tmp_path: Path) -> None:
    """The new fine-tune dropped eval.npz (the old model's reference logits): the re-exported fp32 target
    matches the reference the bundle checks it against."""
    import shutil

    from edge_tl.stages.bundle import bundle
    from edge_tl.stages.export import export

    run = tmp_path / "run"
    shutil.copytree(stale_run, run)
    export(run, TARGET, ood=False)
    RunDir(run).check_fresh(RunDir(run).target(TARGET))
    shipped = bundle(run, TARGET, tmp_path / "b", allow_failed=True)  # not benched here
    assert shipped["golden"]["reference_max_abs_logit_diff"] < 1e-3


def test_target_of_a_stale_prune_names_both_commands(stale_run: Path, tmp_path: Path) -> None:
    """A target made from a prune of the old fine-tune: its own parent (the prune) is unchanged, the prune's
    is not; the error names the prune, then the export (with the --from it was made with)."""
    import shutil

    from edge_tl.manifest import sha256_file

    run = RunDir(tmp_path / "run")
    shutil.copytree(stale_run, run.root)
    # A prune folder made from the old fine-tune (its model bytes do not matter to the check), and a target
    # exported from it: rewrite the parent records as export and prune write them.
    old_ft_sha = json.loads((run.target(TARGET) / "manifest.json").read_text())["parent"]["sha256"]
    run.prune.mkdir()
    shutil.copyfile(run.finetune / "model.pt", run.prune / "model.pt")
    (run.prune / "manifest.json").write_text(json.dumps(
        {"stage": "prune", "parent": {"path": str(run.finetune / "model.pt"), "sha256": old_ft_sha}}))
    tm = json.loads((run.target(TARGET) / "manifest.json").read_text())
    tm |= {"source_stage": "prune", "parent": {"path": str(run.prune / "model.pt"),
                                               "sha256": sha256_file(run.prune / "model.pt")}}
    (run.target(TARGET) / "manifest.json").write_text(json.dumps(tm))
    with pytest.raises(ArtifactError) as err:
        run.check_fresh(run.target(TARGET))
    msg = str(err.value)
    assert f"through {run.prune}" in msg
    assert msg.index(f"`edge-tl prune {run.root}`") < msg.index(f"`edge-tl export {run.root} --target {TARGET}`")
    # Exported from finetune while a prune exists: the command keeps --from finetune.
    tm |= {"source_stage": "finetune", "parent": {"path": str(run.finetune / "model.pt"), "sha256": old_ft_sha}}
    (run.target(TARGET) / "manifest.json").write_text(json.dumps(tm))
    with pytest.raises(ArtifactError, match=f"--target {TARGET} --from finetune`"):
        run.check_fresh(run.target(TARGET))
    run.check_fresh(run.target("cpu-openvino-fp32"))  # not exported: nothing to check
