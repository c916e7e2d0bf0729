"""The shared typer app, the global options and the help conventions every command follows.

Help conventions (applied to every command by ``_Group``, so a new command gets them for free):

* value metavars are the usual upper-case words: an argument shows its own name (``RUN``,
  ``BUNDLE``) unless it states one; an option shows ``PATH`` (a path), ``N`` (an integer), ``X``
  (a number), ``TEXT`` (a string) unless it states one (``NAME``, ``SECONDS``, ...);
* flags show no metavar (not ``<bool>``);
* each command's docstring ends with an ``Example:`` paragraph (a test checks every command has one).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup


@dataclass
class State:
    verbose: bool = False
    quiet: bool = False


state = State()

# The options that mean the same before and after the subcommand (``edge-tl -v bench ...`` and
# ``edge-tl bench ... -v``): ``main`` moves them in front of the subcommand.
GLOBAL_FLAGS = {"--verbose": "v", "-v": "v", "--quiet": "q", "-q": "q"}


# Options whose values are the same kind in every command.
NAMED = {"target": "NAME|PATH", "data": "DIR", "device": "NAME"}


def _metavar(param: Any) -> str | None:
    """The conventional metavar of a click parameter that does not state one ("" for a flag)."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    desc = getattr(param, "type_descriptor", None)
    annotation = getattr(desc, "annotation", None)
    if getattr(desc, "is_list", False):
        args = getattr(annotation, "__args__", ()) or ()
        annotation = args[0] if args else str
    if param.param_type_name == "argument":
        return param.name.upper()
    if param.name in NAMED:
        return NAMED[param.name]
    if annotation is Path or getattr(desc, "is_path", False):
        return "PATH"
    if annotation is int:
        return "N"
    if annotation is float:
        return "X"
    return "TEXT"


# One worked example per command, shown at the end of its --help (a test checks every command has one).
EXAMPLES: dict[str, tuple[str, ...]] = {
    "finetune": ("edge-tl finetune data/parts --out runs/parts",
                 "edge-tl finetune data/parts --out runs/parts --mode partial --unfreeze 1 --epochs 15"),
    "prune": ("edge-tl prune runs/parts --ratio 0.3",),
    "adapt": ("edge-tl adapt runs/parts --unlabeled data/line2-frames --method both --target-val data/line2-labelled",),
    "export": ("edge-tl export runs/parts --target cpu-onnxruntime-int8",
               "edge-tl export runs/parts --target my-line.toml --calibration data/camera-frames"),
    "bench": ("edge-tl bench runs/parts --target cpu-onnxruntime-int8",
              "edge-tl bench runs/parts --all-targets --json report.json"),
    "targets": ("edge-tl targets", "edge-tl targets cpu-openvino-int8 > my-line.toml"),
    "bundle": ("edge-tl bundle runs/parts --target cpu-onnxruntime-int8 --out bundles/parts --max-escape 0.05",),
    "predict": ("edge-tl predict bundles/parts part_0042.png frames/ --json",
                "edge-tl predict bundles/parts line3.mp4 --fps 5",
                "edge-tl predict bundles/parts /dev/video0 --max-frames 100"),
    "watch": ("edge-tl watch bundles/parts /srv/camera/drop --move-to /srv/camera/done",
              "edge-tl watch bundles/parts rtsp://10.0.0.7/stream1 --fps 2 --log line3.jsonl"),
    "run": ("edge-tl run examples/elpv-demo.toml",),
    "dataset": ("edge-tl dataset elpv --out data/elpv",),
    "select": ("edge-tl select data/parts --target cpu-openvino-int8 --budget-ms 5 --out runs/select",
               "edge-tl select data/lineB --target cpu-onnxruntime-fp32 --source runs/lineA --verify 3"),
    "curve": ("edge-tl curve data/parts --shots 1,5,10,20,all --repeats 3 --out runs/curve",),
}


def _with_example(command: Any, plain: bool) -> None:
    """Join the prose paragraphs of ``command.help`` into single lines and append its examples."""
    import inspect

    text = inspect.cleandoc(command.help or "")
    paragraphs = [" ".join(line.strip() for line in p.splitlines()) for p in text.split("\n\n") if p.strip()]
    examples = EXAMPLES.get(command.name or "")
    if examples:
        block = ("Example:" if len(examples) == 1 else "Examples:") + "".join(f"\n  $ {e}" for e in examples)
        paragraphs.append(("\b\n" if plain else "") + block)  # \b: click keeps the lines as they are
    command.help = "\n\n".join(paragraphs)
    command.short_help = paragraphs[0] if paragraphs else None


def conventional(command: Any, ctx: Any | None = None) -> Any:
    """Give every parameter of ``command`` (and its --help) the conventional metavar and its help the
    command's examples; idempotent."""
    if not getattr(command, "_conventional", False):
        _with_example(command, plain=app.rich_markup_mode is None)
        command._conventional = True
    params = list(command.params)
    if ctx is not None:
        helper = command.get_help_option(ctx)
        if helper is not None:
            params.append(helper)
    for param in params:
        if param.metavar is None:
            param.metavar = _metavar(param)
        if param.name == "quiet" and not getattr(param, "help", None):
            param.help = "No progress output (same as the global --quiet)."
        if param.param_type_name == "argument" and not getattr(param, "_conventional", False):
            # Usage shows ``RUN`` / ``[NAME]`` / ``PATHS...`` (not ``{run}``), and the arguments list
            # no type column (the metavar says it).
            param._usage_display_name = _usage_name(param)
            param.display_type_rich = lambda ctx=None: None
            param._conventional = True
    return command


def _usage_name(param: Any) -> Any:
    def usage() -> str:
        name = param.metavar if param.required else f"[{param.metavar}]"
        return name + ("..." if param.nargs != 1 else "")

    return usage


class _Group(TyperGroup):
    """The edge-tl group: commands in the order they were written, with the help conventions."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None:
            conventional(cmd, ctx)
        return cmd

    def format_help(self, ctx: Any, formatter: Any) -> None:
        conventional(self, ctx)
        super().format_help(ctx, formatter)

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        conventional(self, ctx)
        return super().parse_args(ctx, args)


app = typer.Typer(
    name="edge-tl",
    cls=_Group,
    help="Transfer an ImageNet backbone to your images, compress it, ship it to edge targets, "
    "and prove how fast and how faithful it is.\n\n"
    "The flow: finetune -> prune (optional) -> export -> bench -> bundle -> predict/watch on the device. "
    "Exit codes: 0 success, 1 a benchmark gate failed, 2 bad input or configuration (one line "
    "`error: ...`; --verbose adds the traceback). --verbose and --quiet work before or after the "
    "command.\n\n"
    "Example: edge-tl finetune data/parts --out runs/parts && edge-tl export runs/parts --target "
    "cpu-onnxruntime-int8 && edge-tl bench runs/parts --target cpu-onnxruntime-int8",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def require_training() -> None:
    """Raise MissingExtraError (one line, exit 2) unless torch and torchvision import."""
    from ..errors import require

    require("torch", "train")
    require("torchvision", "train")


def version() -> str:
    """The installed edge-tl version (the source tree's when not installed)."""
    import importlib.metadata as md

    try:
        return md.version("edge-tl")
    except md.PackageNotFoundError:
        from .. import __version__

        return __version__


def _show_version(value: bool) -> None:
    if value:
        print(f"edge-tl {version()}")
        raise typer.Exit(0)


@app.callback()
def _global(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show tracebacks for errors (before or "
                                 "after the command)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output (before or after the "
                               "command)."),
    show_version: bool = typer.Option(False, "--version", is_eager=True, callback=_show_version,
                                      help="Print the version and exit."),
) -> None:
    state.verbose = verbose
    state.quiet = quiet
