"""``select`` (which source model) and ``curve`` (how many labels), both before any fine-tune."""

from __future__ import annotations

from pathlib import Path

import typer

from ..manifest import host_text
from ..progress import console
from ._app import app, require_training, state


def _sizes(text: str) -> tuple[int, ...]:
    from ..errors import ConfigError

    try:
        sizes = tuple(sorted({int(s) for s in text.split(",") if s.strip()}))
    except ValueError:
        raise ConfigError(f"--sizes takes pixel sizes separated by commas, got {text!r}") from None
    if not sizes or not all(32 <= s <= 1024 for s in sizes):
        raise ConfigError(f"--sizes must be between 32 and 1024 pixels, got {text!r}")
    return sizes


@app.command()
def select(
    data_dir: Path = typer.Argument(..., metavar="DATA_DIR", help="ImageFolder: one sub-folder per class."),
    target: str = typer.Option(..., "--target", "-t", metavar="NAME|PATH", help="Where the model will run: "
                               "latency is measured on this target's backend."),
    out: Path = typer.Option(Path("runs/select"), "--out", metavar="DIR", help="Writes select.json, select.html "
                             "and the feature cache here."),
    candidates: Path = typer.Option(None, "--candidates", metavar="FILE", help="TOML with [[candidate]] tables "
                                    "(arch, weights, input_size) instead of the defaults."),
    source: list[str] = typer.Option([], "--source", metavar="RUN", help="An earlier edge-tl run as one more "
                                     "candidate (run:RUN); repeatable."),
    sizes: str = typer.Option("160,192,224", metavar="N,N", help="Input sizes of the default candidates."),
    budget_ms: float = typer.Option(None, "--budget-ms", metavar="MS", help="Latency budget (p50, batch 1) for "
                                    "the recommendation."),
    per_class: int = typer.Option(200, metavar="N", help="Training images per class the scores use, drawn by --seed "
                                   "(0: all)."),
    verify: int = typer.Option(0, "--verify", metavar="K", help="Fine-tune the top K and report Kendall's tau "
                               "between score and real validation top-1."),
    seed: int = typer.Option(0, help="Seed of the split (finetune's), the subsample and the scratch weights."),
    val_fraction: float = typer.Option(0.2, help="Held-out fraction per class (the same split finetune makes)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Rank source models (architecture x weights x input size) on your data before training: LogME and a
    cross-validated linear/kNN probe of frozen features on the training split, and latency measured on the
    target's backend. Writes a table, an accuracy-vs-latency plot and a recommendation within --budget-ms.

    Default candidates: every architecture's ImageNet weights at each --sizes (those that do not resolve
    offline are listed with the reason), a random-initialised (scratch) one of each, and --source runs.
    A source no better than scratch is flagged (negative transfer).
    """
    require_training()
    from ..transfer.select import default_candidates, load_candidates
    from ..transfer.select import select as run_select

    cands = load_candidates(candidates) if candidates else default_candidates(_sizes(sizes), tuple(source))
    if candidates and source:
        cands += default_candidates((), tuple(source))
    result = run_select(data_dir, target, out, candidates=cands, budget_ms=budget_ms,
                        per_class=per_class or None, verify_k=verify, seed=seed, val_fraction=val_fraction,
                        quiet=quiet or state.quiet)
    con = console()
    prec = result["precision"]
    for r in result["candidates"]:
        if r["status"] != "scored":
            con.print(f"   {r['name']}: unavailable ({r['reason']})", highlight=False)
            continue
        lat = (r.get("latency") or {}).get(prec) or {}
        p50 = f"{lat['p50_ms']:.2f} ms" if lat else (r.get("latency") or {}).get("reason", "not measured")
        # "flag: ..." not "[...]": rich would read a bracketed word as markup and print nothing
        flags = "".join(f"  (flag: {f.replace('_', ' ')})" for f in r.get("flags", []))
        con.print(f"{r['rank']:>2} {r['name']}: probe top-1 {r['linear_top1']:.4f}, kNN {r['knn_top1']:.4f}, "
                  f"LogME {r['logme']:.3f}, {prec} p50 {p50}{flags}", highlight=False)
    con.print(f"   latency measured on: {host_text(result.get('host'))}", highlight=False)
    rec = result.get("recommendation")
    if rec:
        con.print(f"[green]recommended:[/] {rec['name']} ({rec['why']}) -> {rec['command']}", highlight=False)
    else:
        con.print(f"[yellow]{result.get('recommendation_reason', 'no recommendation')}[/]", highlight=False)
    if "verify" in result:
        v = result["verify"]
        tau = v.get("kendall_tau_linear_top1")
        con.print(f"verify: top {v['k']} fine-tuned, val top-1 {', '.join(f'{x:.4f}' for x in v['val_top1'])}; "
                  f"Kendall tau (probe vs real) {'n/a' if tau is None else f'{tau:.2f}'}", highlight=False)
    con.print(f"-> {out / 'select.html'}", highlight=False)


@app.command()
def curve(
    data_dir: Path = typer.Argument(..., metavar="DATA_DIR", help="ImageFolder: one sub-folder per class."),
    out: Path = typer.Option(Path("runs/curve"), "--out", metavar="DIR", help="Writes curve.json, curve.html "
                             "and the feature cache here."),
    shots: str = typer.Option("1,5,10,20,all", metavar="K,K,all", help="Labelled training images per class."),
    repeats: int = typer.Option(3, help="Draws per shot count (mean and spread)."),
    arch: str = typer.Option("mobilenet_v2", metavar="NAME", help="Backbone."),
    weights: str = typer.Option("imagenet", metavar="imagenet|none|run:RUN|PATH", help="Backbone weights."),
    input_size: int = typer.Option(None, metavar="N", help="Square input side in pixels (default: the weights')."),
    seed: int = typer.Option(0, help="Seed of the split (finetune's) and of the draws."),
    val_fraction: float = typer.Option(0.2, help="Held-out fraction per class: every point is scored on it."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Top-1 against labelled images per class (a linear probe of frozen features, scored on finetune's
    validation split), mean and spread over --repeats draws: how many images to label before labelling.
    """
    require_training()
    from ..transfer.curve import run_curve

    result = run_curve(data_dir, out, arch=arch, weights=weights, input_size=input_size, shots=shots,
                       repeats=repeats, seed=seed, val_fraction=val_fraction, quiet=quiet or state.quiet)
    con = console()
    for r in result["rows"]:
        con.print(f"{r['shots']:>4} per class: top-1 {r['top1_mean']:.4f} ± {r['top1_std']:.4f} "
                  f"(min {r['top1_min']:.4f}, {len(r['top1'])} draw(s))", highlight=False)
    con.print(f"-> {out / 'curve.html'}", highlight=False)
