"""`fbt-engine`: the headless engine. Data on stdout, people on stderr.

torch and timm are imported inside the commands that need them, so `--help` and the cached
catalog answer at once.
"""

from __future__ import annotations

import enum
import json
import sys
from typing import Annotated, Any, Callable, Optional

import typer

from .catalog import KINDS
from .config import MIXERS, ORDERS
from . import launch as L
from .errors import FBTError

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fuse Before Transfer: distil any timm teacher into any timm student.")


def _version(value: bool) -> None:
    if value:  # versions from package metadata: no torch import for `--version`
        from importlib.metadata import PackageNotFoundError, version

        def v(name: str) -> str:
            try:
                return version(name)
            except PackageNotFoundError:
                return "not installed"
        from .protocol import PROTOCOL_VERSION
        typer.echo(f"fbt-engine {v('fbt-workbench')} (torch {v('torch')}, timm {v('timm')}, protocol {PROTOCOL_VERSION})")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the versions and exit.")] = False) -> None:
    """Fuse Before Transfer: distil any timm teacher into any timm student."""


def _choices(name: str, values: tuple[str, ...]) -> Any:
    """A real choice (an Enum typer turns into click.Choice): a typo is refused with the allowed
    values listed, and shells complete them."""
    return enum.Enum(name, {v: v for v in values}, type=str)


Kind = _choices("Kind", KINDS)
Order = _choices("Order", ORDERS)
Mixer = _choices("Mixer", MIXERS)


def _complete_model(incomplete: str) -> list[str]:
    """Shell completion of model names from the shipped catalog (no torch, no timm import)."""
    from .catalog import completion_names
    return [n for n in completion_names() if n.startswith(incomplete)]


def _fail(exc: FBTError) -> None:
    typer.echo(f"error: {exc.message}", err=True)
    if exc.hint:
        typer.echo(f"hint: {exc.hint}", err=True)
    raise typer.Exit(2)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors become one sentence and a hint on stderr with exit code 2; bugs keep tracebacks."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FBTError as exc:
            _fail(exc)
    return wrapper


def _quiet_timm() -> None:
    import logging
    logging.getLogger("timm").setLevel(logging.ERROR)


@app.command()
@user_errors
def models(
    filter: Annotated[str, typer.Option("--filter", "-f", help="Name pattern: glob (resnet*) or substring.")] = "",
    kind: Annotated[Optional[Kind], typer.Option(help="Only this kind.")] = None,
    fusable: Annotated[bool, typer.Option("--fusable", help="Only models FBT can fuse.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array on stdout.")] = False,
    counts: Annotated[bool, typer.Option(help="Count the parameters of models the shipped table does not know "
                                              "(only under another timm version; low priority, then cached).")] = True,
) -> None:
    """List timm architectures with family, kind, parameters, input size, pretrained tags, fusable."""
    from . import catalog as cat
    entries = cat.catalog(counts=counts, progress=_count_progress() if counts else None)
    chosen = cat.select(entries, filter, kind.value if kind else "", fusable)
    if as_json:
        sys.stdout.write(json.dumps(cat.to_json(chosen)) + "\n")
        return
    _print_models(chosen)


def _count_progress(every_s: float = 0.5) -> Callable[[int, int], None]:
    """Progress of the parameter count on stderr: `counting 300/1,373`, at most twice a second
    (the TUI shows the latest line in its status line)."""
    import time
    last = [0.0]

    def show(i: int, n: int) -> None:
        now = time.monotonic()
        if i == 1:
            typer.echo(f"{n:,} models are not in the shipped table: counting their parameters at low "
                       "priority (cached afterwards)", err=True)
        if i in (1, n) or now - last[0] >= every_s:
            last[0] = now
            typer.echo(f"counting {i:,}/{n:,}", err=True)
    return show


def _fmt_params(n: Optional[int]) -> str:
    return "?" if not n or n < 0 else f"{n / 1e6:.1f}M"


_MODEL_COLUMNS = ("name", "family", "kind", "params", "input", "fusable", "pretrained tags")


def _model_cells(e: Any) -> tuple[str, ...]:
    tags = ", ".join(e.pretrained_tags[:3]) + (f" +{len(e.pretrained_tags) - 3}" if len(e.pretrained_tags) > 3 else "")
    return (e.name, e.family, e.kind, _fmt_params(e.params), "x".join(map(str, e.input_size[1:])),
            "yes" if e.fusable else "", tags)


def _fitting_columns(rows: list[tuple[str, ...]], width: int) -> list[int]:
    """Indexes of the columns that fit `width` (3 characters between columns). The name always
    shows in full; family and pretrained tags wrap but need a readable minimum; the others are
    left out whole when there is no room, least useful first."""
    natural = [max([len(_MODEL_COLUMNS[i])] + [len(r[i]) for r in rows]) for i in range(len(_MODEL_COLUMNS))]
    need = {i: w for i, w in enumerate(natural)}
    need[1], need[6] = min(natural[1], 12), min(natural[6], 20)  # these two wrap
    shown = list(range(len(_MODEL_COLUMNS)))
    for drop in (6, 1, 4, 2, 5, 3):  # tags, family, input, kind, fusable, params
        if sum(need[i] for i in shown) + 3 * (len(shown) - 1) <= width:
            break
        shown.remove(drop)
    return shown


def _print_models(entries: list) -> None:
    """A table whose name column is never cut (names are what people copy): family and pretrained
    tags wrap, and are left out (with a note on stderr) when the terminal is too narrow for them."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    console = Console()
    rows = [_model_cells(e) for e in entries]
    shown = _fitting_columns(rows, console.width)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i in shown:
        label = _MODEL_COLUMNS[i]
        if label == "name":
            table.add_column(label, no_wrap=True, min_width=min(max([4] + [len(r[0]) for r in rows]), console.width))
        elif label in ("family", "pretrained tags"):
            table.add_column(label, overflow="fold", ratio=1 if label == "pretrained tags" else None)
        else:
            table.add_column(label, no_wrap=True)
    for r in rows:
        table.add_row(*(r[i] for i in shown))
    console.print(table, soft_wrap=False)
    hidden = [_MODEL_COLUMNS[i] for i in range(len(_MODEL_COLUMNS)) if i not in shown]
    names = ", ".join(hidden[:-1]) + (" and " if len(hidden) > 1 else "") + hidden[-1] if hidden else ""
    note = f" ({names} left out at {console.width} columns: widen the terminal or use --json)" if hidden else ""
    typer.echo(f"{len(entries)} models{note}", err=True)


@app.command()
@user_errors
def fuse(
    teacher: Annotated[str, typer.Argument(help="Teacher: a timm model name.", autocompletion=_complete_model)],
    student: Annotated[str, typer.Argument(help="Student: a timm model name.", autocompletion=_complete_model)],
    img_size: Annotated[int, typer.Option(help="Input size (square).")] = 224,
    num_classes: Annotated[int, typer.Option(help="Classes of the task.")] = 1000,
    order: Annotated[Order, typer.Option(help="Which model gives the local stages (auto: the CNN of the pair).")
                     ] = Order.auto,
    split: Annotated[int, typer.Option(help="Stages taken from the local model.", min=1, max=3)] = 3,
    mixer: Annotated[Mixer, typer.Option(help="L2G mixing (swin: a windowed Swin block, the paper's).")
                     ] = Mixer.auto,
    depth: Annotated[int, typer.Option(help="Depth of the torchinfo tree.")] = 2,
    teacher_kwargs: Annotated[str, typer.Option(help="JSON object of extra create_model arguments.")] = "{}",
    student_kwargs: Annotated[str, typer.Option(help="JSON object of extra create_model arguments.")] = "{}",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Show the fused model FBT builds for a teacher/student pair: plan, parameters, mult-adds, tree."""
    _quiet_timm()
    from .summary import fuse_report
    report = fuse_report(teacher, student, img_size=img_size, num_classes=num_classes, order=order.value,
                         split=split, mixer=mixer.value, depth=depth, teacher_kwargs=_json_arg(teacher_kwargs, "--teacher-kwargs"),
                         student_kwargs=_json_arg(student_kwargs, "--student-kwargs"))
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    _print_fuse(report)


def _json_arg(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise FBTError(f"{flag} {text!r} is not a JSON object", f"write it like {flag} '{{\"patch_size\": 4}}'")
    return value


def _print_fuse(r: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    con = Console(soft_wrap=True)
    plan = r["plan"]
    con.print(f"[bold]Fused model[/] for {r['teacher']['name']} -> {r['student']['name']} "
              f"at {r['img_size']}x{r['img_size']}")
    con.print(f"  local (L):  {plan['local_model']} ({plan['local']}) - {plan['reason']}")
    con.print(f"  global (G): {plan['global_model']} ({plan['global']})")
    con.print(f"  chain:      {plan['chain']}")
    l2g = plan["l2g"]
    con.print(f"  L2G:        {l2g['in_layout']} {l2g['in_grid']}x{l2g['in_channels']} -> {l2g['out_layout']} "
              f"{l2g['out_grid']}x{l2g['out_channels']}; {l2g['resample']}, {l2g['norm']}, mixer={l2g['mixer']}"
              f"{' (%d heads)' % l2g['heads'] if l2g['mixer'] in ('attention', 'swin') else ''}"
              f"{', class token + pos embed' if l2g['out_prefix'] else ''}")
    table = Table("parameters", "count", title=None)
    for key, value in r["params"].items():
        table.add_row(key.replace("_", " "), f"{value:,}")
    table.add_row("F mult-adds", f"{r['mult_adds']:,}")
    con.print(table)
    sys.stdout.write(r["summary"] + "\n")  # torchinfo's own fixed-width table: never re-wrapped


@app.command()
def serve() -> None:
    """Answer requests (models, fuse, summary, validate, cancel) as JSON lines on stdin/stdout, warm,
    until stdin closes: the TUI's one engine per session. Protocol: docs/protocol.md."""
    _quiet_timm()
    from .serve import serve as serve_forever
    raise typer.Exit(serve_forever())


@app.command()
@user_errors
def run(
    preset: Annotated[str, typer.Argument(help="Preset TOML file, e.g. presets/quickstart.toml.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override: section.key=value (repeatable).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Run name (folder under the runs dir).")] = None,
    runs_dir: Annotated[Optional[str], typer.Option(help="Where run folders go (default: the preset's, runs/).")] = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Also write every event as JSON lines on stdout.")] = False,
    gpus: L.Gpus = None,
    nproc_per_node: L.NprocPerNode = None,
    nodes: L.Nodes = 1,
    node_rank: L.NodeRank = None,
    master: L.Master = "",
    rdzv_endpoint: L.RdzvEndpoint = "",
    rdzv_id: L.RdzvId = "",
    rdzv_backend: L.RdzvBackend = "c10d",
) -> None:
    """Train: (teacher if needed, then) distil the student as the preset says. With --gpus N (or
    --nproc-per-node N), on N processes per node under torchrun."""
    from . import config as C
    cfg = C.load_preset(preset, set_ or [])
    launch = L.wanted(gpus, nproc_per_node, nodes, node_rank, master, rdzv_endpoint, rdzv_id, rdzv_backend)
    _quiet_timm()
    if launch is not None:
        from .preflight import check
        from .run import _announce_failure
        _announce_failure(lambda: check(cfg, source=preset), cfg.name, jsonl)  # once, before any rank starts
        code = L.execute(launch, L.rank_command("run", preset, set_, name, runs_dir, jsonl), jsonl)
        _ignore_late_signals()
        raise typer.Exit(code)
    from .run import start
    code, _ = start(cfg, name=name, runs_dir=runs_dir, jsonl=jsonl, source=preset)
    _ignore_late_signals()
    raise typer.Exit(code)


@app.command("methods")
@user_errors
def methods_(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array on stdout.")] = False,
) -> None:
    """List the training methods (one module each in fbt_engine/methods/) with their loss terms."""
    from . import config as C
    from . import methods as M
    rows = []
    for name, cls in M.all_methods().items():
        terms = [f"{n}={w:g}" for n, w in cls.term_weights(C.LossConfig()).items()]
        rows.append({"name": name, "summary": cls.summary, "teacher": cls.needs_teacher,
                     "trains": list(cls.trains), "terms": terms})
    if as_json:
        typer.echo(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table
    table = Table("method", "what it does", "loss terms (default weights)", "trains")
    for r in rows:
        table.add_row(r["name"], r["summary"], ", ".join(r["terms"]), ", ".join(r["trains"]))
    Console(width=200).print(table)


@app.command()
@user_errors
def sweep(
    preset: Annotated[str, typer.Argument(help="Preset TOML file, e.g. presets/quickstart.toml.")],
    grid: Annotated[Optional[list[str]], typer.Option(
        "--grid", help="KEY=V1,V2,... (repeatable; the cartesian product is run), e.g. method=kd,fbt or "
                       "fusion.split=1,2,3. Values are TOML; commas inside [...] or quotes stay.")] = None,
    vary: Annotated[Optional[list[str]], typer.Option(
        "--vary", help="KEY=V1,V2,... one at a time (an ablation): the base plus one run per value, each "
                       "changing only that key (repeatable; combined with --grid).")] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds, each cell run once per seed "
                                            "(default: the preset's seed).")] = "",
    jobs: Annotated[int, typer.Option(help="Cells run side by side (CPU: cores split between them; "
                                           "one GPU each when several are visible).")] = 1,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override for every cell: section.key=value.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Sweep folder name (default: <preset name>-sweep).")] = None,
    runs_dir: Annotated[Optional[str], typer.Option(help="Where the sweep folder goes (default: the preset's, runs/).")] = None,
) -> None:
    """Run a preset over a grid of overrides and seeds (one run per cell, a shared teacher trained once),
    then print mean ± std per grid point and write results.csv/results.json. Ctrl-C stops the whole
    sweep (again: abort); `fbt-engine resume <sweep folder>` continues it."""
    if not grid and not vary:
        raise FBTError("sweep needs at least one --grid KEY=V1,V2,... or --vary KEY=V1,V2,...",
                       "e.g. --grid method=scratch,kd,fbt --seeds 0,1,2; one configuration over seeds: "
                       "--grid method=fbt --seeds 0,1,2 (or use `compare` for every method)")
    _run_sweep(preset, grid or [], seeds, jobs, set_ or [], name, runs_dir, vary or [])


def _run_sweep(preset: str, grid: list[str], seeds: str, jobs: int, overrides: list[str], name: Optional[str],
               runs_dir: Optional[str], vary: Optional[list[str]] = None) -> None:
    _quiet_timm()
    from .sweep import execute, new_sweep
    sw = new_sweep(preset, grid, seeds, jobs, overrides, name, runs_dir, vary)
    say = lambda line: typer.echo(line, err=True)  # noqa: E731
    say(f"sweep {sw.dir}: {len(sw.cells)} runs ({' x '.join(sw.columns)} x {len(sw.seeds)} seed(s)), "
        f"{jobs} at a time")
    code = execute(sw, say)
    _ignore_late_signals()
    raise typer.Exit(code)


@app.command()
@user_errors
def compare(
    preset: Annotated[str, typer.Argument(help="Preset TOML file, e.g. presets/quickstart.toml.")],
    methods: Annotated[str, typer.Option(help="Comma-separated methods to run on the same budget "
                                              "(default: every method, see `fbt-engine methods`).")] = "",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds (default: the preset's seed).")] = "",
    jobs: Annotated[int, typer.Option(help="Runs side by side.")] = 1,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override: section.key=value (repeatable).")] = None,
    name: Annotated[Optional[str], typer.Option(help="Sweep folder name (default: <preset name>-compare).")] = None,
    runs_dir: Annotated[Optional[str], typer.Option(help="Where the sweep folder goes (default: the preset's, runs/).")] = None,
) -> None:
    """Run the same preset once per method (same data, budget and teacher) and print one table:
    `sweep --grid method=...` (scratch first: the other runs are checked against its curve)."""
    from . import config as C
    chosen = [m.strip() for m in methods.split(",") if m.strip()] or list(C.METHODS)
    bad = [m for m in chosen if m not in C.METHODS]
    if bad:
        raise FBTError(f"unknown method(s) {', '.join(bad)} in --methods", f"use some of: {', '.join(C.METHODS)}")
    if not name:
        name = f"{C.load_preset(preset, set_ or []).name}-compare"
    _run_sweep(preset, ["method=" + ",".join(chosen)], seeds, jobs, set_ or [], name, runs_dir)


@app.command()
@user_errors
def resume(
    run_dir: Annotated[str, typer.Argument(help="A run folder, e.g. runs/quickstart.")],
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Also write every event as JSON lines on stdout.")] = False,
    gpus: L.Gpus = None,
    nproc_per_node: L.NprocPerNode = None,
    nodes: L.Nodes = 1,
    node_rank: L.NodeRank = None,
    master: L.Master = "",
    rdzv_endpoint: L.RdzvEndpoint = "",
    rdzv_id: L.RdzvId = "",
    rdzv_backend: L.RdzvBackend = "c10d",
) -> None:
    """Continue a stopped run from its last checkpoint, in the same folder; or a stopped sweep (its
    completed runs are kept, stopped ones resumed, the rest started). --gpus N: on N processes."""
    launch = L.wanted(gpus, nproc_per_node, nodes, node_rank, master, rdzv_endpoint, rdzv_id, rdzv_backend)
    _quiet_timm()
    if launch is not None:
        code = L.execute(launch, L.rank_command("resume", run_dir, jsonl=jsonl), jsonl, run_dir=L.run_folder(run_dir))
        _ignore_late_signals()
        raise typer.Exit(code)
    from .sweep import is_sweep
    if is_sweep(run_dir):
        from .sweep import Sweep, execute
        code = execute(Sweep.read(run_dir), lambda line: typer.echo(line, err=True))
        _ignore_late_signals()
        raise typer.Exit(code)
    from .run import resume as resume_run
    code = resume_run(run_dir, jsonl=jsonl)
    _ignore_late_signals()
    raise typer.Exit(code)


def _ignore_late_signals() -> None:
    """The run has ended and saved everything: a Ctrl-C during shutdown must not print a traceback."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@app.command()
@user_errors
def validate(
    preset: Annotated[str, typer.Argument(help="Preset TOML file.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override: section.key=value.")] = None,
    show: Annotated[bool, typer.Option("--show", help="Print the fully resolved preset.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Types, names and ranges only (no torch, no models).")] = False,
) -> None:
    """Check a preset without running it: types, ranges, then (unless --quick) everything `run` checks
    before it starts: models and pair built on the meta device, optimizer, schedule, augmentation,
    device, teacher/student files. Exit 0 when `run` would start; the data itself is not read."""
    from . import config as C
    cfg = C.load_preset(preset, set_ or [])
    if not quick:
        _quiet_timm()
        from .preflight import check
        for line in check(cfg, source=preset).checks:
            typer.echo(f"ok: {line}", err=True)
    typer.echo(f"{preset}: valid" + (" (types and ranges only)" if quick else "") + f": {C.describe(cfg)}", err=True)
    if show:
        sys.stdout.write(C.dumps(cfg))


@app.command("eval")
@user_errors
def eval_(
    target: Annotated[str, typer.Argument(help="A run folder, or a checkpoint (.pt/.safetensors) inside one.")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override data settings, e.g. data.root=...")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Evaluate a run's student (best checkpoint by default) on the validation set."""
    _quiet_timm()
    from .evaluate import evaluate_run
    result = evaluate_run(target, set_ or [])
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        typer.echo(f"{result['student']} from {result['weights']}: top-1 {result['top1']:.2f}%  "
                   f"top-5 {result['top5']:.2f}%  ({result['images']} images of {result['dataset']})")


from .export import ExportFormat, WeightsChoice  # noqa: E402 - the export command's choices (no torch import)


@app.command("export")
@user_errors
def export_(
    target: Annotated[str, typer.Argument(help="A run folder, or a checkpoint (.pt/.safetensors) inside one.")],
    format: Annotated[ExportFormat, typer.Option("--format", help="timm: model.safetensors + config.json, what "
                                                 "timm.create_model('local-dir:OUT', pretrained=True) loads; onnx: "
                                                 "model.onnx, checked against PyTorch with onnxruntime.")] = ExportFormat.timm,
    out: Annotated[Optional[str], typer.Option(help="Output folder (default: RUN/export/timm or RUN/export/onnx).")] = None,
    weights: Annotated[WeightsChoice, typer.Option(help="From a run folder: auto (the finished student, else "
                                                        "best.pt, else last.pt), student, best or last.")] = WeightsChoice.auto,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override data settings, e.g. data.root=...")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
) -> None:
    """Export a run's student in timm's own format (a folder timm loads with no other arguments) or as ONNX."""
    _quiet_timm()
    from pathlib import Path
    from .export import export_run
    result = export_run(target, format, out, weights, set_ or [])
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    typer.echo(f"{result['student']} from {result['weights']} -> {result['out']}: "
               f"{', '.join(Path(f).name for f in result['files'])}")
    check = result.get("check")
    if check:
        typer.echo(f"onnxruntime reproduces the PyTorch logits on {check['inputs']} random inputs: max abs diff "
                   f"{check['max_abs_diff']:.2e} (tolerance {check['tolerance']:.1e}), top-1 agreement "
                   f"{check['top1_agreement']:.0%} ({check['exporter']} exporter)")
    else:
        typer.echo(f"load it with: timm.create_model({'local-dir:' + result['out']!r}, pretrained=True)", err=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
