"""``finetune`` (and, from the compression work, ``prune``)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..anomaly.methods import method_for, names
from ..progress import console
from ._app import app, require_training, state


def _arch_help() -> str:
    # The help lists the registry's names; a device whose install leaves out the training modules still
    # loads the CLI for predict/watch.
    try:
        from ..models import architectures
    except ImportError:
        return "Backbone (the training install lists them)."
    return f"Backbone: {', '.join(architectures())} (efficientnet_lite*: pip install 'edge-tl[lite]')."


@app.command()
def finetune(
    data_dir: Path = typer.Argument(..., metavar="DATA_DIR", help="ImageFolder: one sub-folder per class."),
    out: Path = typer.Option(..., "--out", metavar="RUN", help="Run directory to write (RUN/finetune/)."),
    arch: str = typer.Option("mobilenet_v2", metavar="NAME", help=_arch_help()),
    weights: str = typer.Option("imagenet", metavar="imagenet|none|run:RUN|PATH",
                                help="imagenet | none (random initialisation) | run:RUN (the backbone of an earlier "
                                "classification run: RUN, meaning RUN/finetune, or its finetune/ folder; same --arch; "
                                "the new run keeps its preprocessing) | PATH to a state_dict."),
    mode: str = typer.Option("linear", metavar="linear|partial|full",
                             help="linear (frozen backbone, cached features) | partial | full."),
    epochs: int = typer.Option(None, help="Epochs (default: 30 linear; partial: 20, where the frozen "
                               "layers run once and an epoch is cheap, 8 with --progressive; 8 full). "
                               "Early stopping (--patience) may end sooner; the manifest records both."),
    unfreeze: int = typer.Option(3, help="partial: number of last blocks to train."),
    progressive: bool = typer.Option(False, "--progressive", help="partial: unfreeze one more block per epoch."),
    lr: float = typer.Option(None, help="Learning rate of the head."),
    backbone_lr_scale: float = typer.Option(0.1, help="partial/full: the unfrozen backbone blocks learn at this "
                                            "multiple of --lr."),
    batch_size: int = typer.Option(32, help="Batch size."),
    val_fraction: float = typer.Option(0.2, help="Held-out fraction per class."),
    seed: int = typer.Option(0, help="Seed for the split, the initialisation and augmentation."),
    device: str = typer.Option("auto", metavar="auto|cpu|cuda", help="Where to train: auto (cuda when "
                                "available) | cpu | cuda."),
    workers: int = typer.Option(2, help="Data-loading worker processes."),
    cache_mb: int = typer.Option(2048, "--cache-mb", metavar="MB", help="partial --progressive/full: decode the "
                                 "images once and augment on the training device when they fit in MB (0: decode "
                                 "every epoch)."),
    patience: int = typer.Option(5, help="Early stopping: epochs without validation improvement."),
    views: int = typer.Option(2, help="partial: cached views per training image (1 plain + augmented); "
                              "the frozen layers run once per view."),
    balance: str = typer.Option("none", metavar="none|weights|sampler",
                                help="Imbalanced classes: none | weights (loss weighted per class) | "
                                "sampler (classes drawn equally often); early stopping then uses balanced accuracy."),
    resize: str = typer.Option(None, metavar="shorter|full|letterbox|auto",
                               help="How an image becomes the square input: shorter (resize + centre "
                               "crop, ImageNet's recipe) | full (whole frame, squeezed) | letterbox (whole frame, "
                               "padded) | auto (letterbox when the crop would drop a median > 45 %). "
                               "Default: shorter; full for --task anomaly."),
    engine: str = typer.Option("auto", metavar="auto|onnxruntime|torch",
                               help="What runs the frozen layers once: auto (ONNX Runtime on a CPU) | "
                               "onnxruntime | torch."),
    input_size: int = typer.Option(None, metavar="N", help="Square input side in pixels (default: the weights' "
                                   "own, 224): larger keeps fine defects visible, at a latency cost."),
    task: str = typer.Option("classify", metavar="classify|anomaly",
                             help="classify (an ImageFolder of labelled classes) | anomaly (DATA_DIR holds good "
                             "images only, or name the good class with --ok-class; PatchCore/PaDiM)."),
    method: str = typer.Option(names()[0], metavar="|".join(names()), help="anomaly: " + " | ".join(
                               f"{n} ({method_for(n).summary})" for n in names()) + "."),
    val: Path = typer.Option(None, "--val", metavar="DIR", help="anomaly: labelled folder (a good/ok folder and "
                             "defect folders) that sets the threshold (one half) and gives AUROC (the other)."),
    ok_class: str = typer.Option(None, "--ok-class", metavar="NAME", help="anomaly: the good class folder in "
                                 "DATA_DIR or --val (default: the folder named good or ok)."),
    coreset: float = typer.Option(0.01, metavar="FRACTION", help="anomaly (patchcore): bank size as a fraction of "
                                  "the training patches (greedy coreset)."),
    bank_size: int = typer.Option(None, metavar="N", help="anomaly (patchcore): bank entries (overrides --coreset)."),
    dim: int = typer.Option(None, metavar="D", help="anomaly: random projection of the patch features to D "
                            "dimensions (default: 64 for padim, none for patchcore; fewer cost less per image)."),
    clusters: str = typer.Option("auto", metavar="auto|K", help="anomaly (padim): modes of the good images (k-means), "
                                 "one Gaussian per position each; auto picks 1-3 on the --val threshold half "
                                 "(one mode without defect images)."),
    holdout: float = typer.Option(None, metavar="FRACTION", help="anomaly: good images kept out of the fit for "
                                  "the threshold and the figures (default 0.2 without --val, 0 with it)."),
    max_false_reject: float = typer.Option(None, metavar="RATE", help="anomaly: set the threshold so that the "
                                           "false-reject rate's 95 % upper bound is within RATE (default with "
                                           "defect images: max balanced accuracy; without: 0.05)."),
    baseline: str = typer.Option("none", metavar="none|scratch",
                                 help="scratch: also train the same --arch from random initialisation (same split, "
                                 "mode, epochs and seed; in linear mode a random frozen backbone with a trained head) "
                                 "and record what the transfer gained, per class too (metrics.baseline). "
                                 "classify only."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Fine-tune a pretrained backbone on an image folder, or fit a good-only anomaly model (--task anomaly).

    Writes RUN/finetune/ (model.pt, manifest.json, split.json). Needs the train extra (torch):
    pip install 'edge-tl[train]'.
    """
    require_training()
    from ..tasks import fit_task, fit_task_options, task_option_error

    wrong = task_option_error(task, weights, baseline)
    if wrong is not None:
        from ..errors import ConfigError

        raise ConfigError(f"unknown --task {task!r}; choose classify or anomaly" if wrong[0] == "task" else
                          f"--{wrong[0]}{' run:' if wrong[0] == 'weights' else ''} is for --task classify{wrong[1]}")
    manifest = fit_task(data_dir, out, **fit_task_options(locals() | {"quiet": quiet or state.quiet}))
    if manifest:
        console().print(finetune_summary(manifest, out), soft_wrap=True)  # an anomaly run's summary too


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
    anomaly run's manifest gets ``anomaly_summary``."""
    if manifest.get("task") == "anomaly":
        return anomaly_summary(manifest, out)
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
