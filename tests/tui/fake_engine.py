"""A stand-in for `fbt-engine` that answers the TUI contract (docs/protocol.md) with canned data.

Usage: FBT_ENGINE="python tests/tui/fake_engine.py" fbt-tui
Commands: models --json | fuse T S --json [...] | run PRESET --jsonl [--name N] [--runs-dir D]
          | resume RUN_DIR --jsonl | validate PRESET | serve (the service protocol, see serve())
          | compare PRESET --methods A,B [--seeds 0,1] --name N --runs-dir D | resume SWEEP_DIR
          (a sweep: sweep.json plus one run folder per cell, run one after another).
Run scenario: $FBT_FAKE_SCENARIO, else the preset's file name if it contains one of the scenario
words (normal, fail, crash, fast, slow). Delay between steps: $FBT_FAKE_DELAY seconds.
Fault scenarios: segv (dies of SIGSEGV mid-run), orphan (SIGKILLs itself while a grandchild holds
its pipes), garbage (MALFORMED lines on stdout and in events.jsonl, then a torn last line), flood
($FBT_FAKE_RATE step events per second for $FBT_FAKE_SECONDS seconds). warn: a health `warning` in epoch 2.
Stdlib plus fbt_engine.events/config only (no torch), so it starts in a blink.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from fbt_engine import protocol as P  # noqa: E402
from fbt_engine.events import Event, encode, read_events  # noqa: E402

M = 1_000_000
MODELS = [
    ("resnet18", "resnet", "cnn", 11.69, ["a1_in1k", "tv_in1k"], True),
    ("resnet50", "resnet", "cnn", 25.56, ["a1_in1k", "tv2_in1k"], True),
    ("convnext_tiny", "convnext", "cnn", 28.59, ["fb_in1k"], True),
    ("mobilenetv3_small_100", "mobilenetv3", "cnn", 2.54, ["lamb_in1k"], True),
    ("efficientnet_b0", "efficientnet", "cnn", 5.29, ["ra_in1k"], True),
    ("vit_tiny_patch16_224", "vision_transformer", "msa", 5.72, ["augreg_in21k_ft_in1k"], True),
    ("deit_small_patch16_224", "deit", "msa", 22.05, ["fb_in1k"], True),
    ("swin_tiny_patch4_window7_224", "swin_transformer", "msa", 28.29, ["ms_in1k"], True),
    ("mixer_b16_224", "mlp_mixer", "mlp", 59.88, ["goog_in21k_ft_in1k"], True),
    ("resmlp_12_224", "mlp_mixer", "mlp", 15.35, ["fb_in1k"], True),
    ("coatnet_0_rw_224", "maxxvit", "hybrid", 27.44, ["sw_in1k"], True),
    ("levit_128", "levit", "hybrid", 9.21, ["fb_in1k"], False),
    ("legacy_senet154", "senet", "unknown", None, [], False),
]
KIND = {m[0]: m[2] for m in MODELS}
FUSABLE = {m[0]: m[5] for m in MODELS}
STOP = False


def models_json() -> list[dict]:
    return [{"name": n, "family": f, "kind": k, "params": int(p * M) if p else None,
             "input_size": [3, 224, 224], "pretrained_tags": tags, "fusable": fus}
            for n, f, k, p, tags, fus in MODELS]


def fail(message: str, hint: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    print(f"hint: {hint}", file=sys.stderr)
    raise SystemExit(2)


def opt(args: list[str], name: str, default: str) -> str:
    return args[args.index(name) + 1] if name in args else default


def stages(name: str, img: int) -> list[P.Stage]:
    cnn = KIND.get(name, "cnn") in ("cnn", "hybrid")
    chans = [64, 64, 128, 256, 512] if cnn else [96, 96, 192, 384, 768]
    out = []
    for i, c in enumerate(chans):  # stem, stage1..stage4 as the real engine reports them
        g = max(1, img // (4 * 2 ** max(0, i - 1)))
        shape = [c, g, g] if cnn else [g, g, c]
        out.append(P.Stage(name="stem" if i == 0 else f"stage{i}", layout="nchw" if cnn else "nhwc",
                           shape=shape, num_prefix=0))
    return out


class FakeError(Exception):
    def __init__(self, kind: str, message: str, hint: str) -> None:
        super().__init__(message)
        self.kind, self.message, self.hint = kind, message, hint


def fuse_result(req: P.FuseRequest) -> P.FuseResult:
    """The canned answer to a fuse request, typed by the protocol (the service and `fuse --json`)."""
    teacher, student, img, split, order, depth = (req.teacher, req.student, req.img_size, req.split,
                                                  req.order, req.depth)
    if not 8 <= img <= 2048:
        raise FakeError("config_error", f"input size {img} is out of range: it must be from 8 to 2048",
                        "use 224 for the paper's setting")
    for name in (teacher, student):
        if name not in KIND:
            raise FakeError("model_error", f"unknown model {name!r}", "pick a name from `fbt-engine models`")
        if not FUSABLE[name]:
            raise FakeError("model_error", f"{name} has no 4-stage adapter, so it cannot be fused",
                            "choose a fusable model (see the fusable column)")
    local, glob = (teacher, student) if order == "teacher-first" else (student, teacher)
    chain = (f"{local} stem..stage{split} > L2G (conv1x1 256->384, attention) > "
             f"{glob} stage{split + 1}{'' if split == 3 else '..stage4'} > head")
    summary = "\n".join([f"FusedModel ({local} + {glob}, img {img})"] + [
        f"{'  ' * d}├─Block{d}-{i}: {d}-{i} [1, 256, 14, 14]  {1000 * (d + i)}"
        for d in range(1, depth + 1) for i in range(1, 4)])
    return P.FuseResult(
        teacher=P.ModelView(name=teacher, kind=KIND[teacher], family=teacher.split("_")[0], params=28288354,
                            stages=stages(teacher, img)),
        student=P.ModelView(name=student, kind=KIND[student], family=student.split("_")[0], params=11689512,
                            stages=stages(student, img)),
        plan={"local": "student" if local == student else "teacher", "global": "teacher",
              "local_model": local, "global_model": glob, "split": split, "order": order,
              "reason": "the CNN goes first (local features)", "junction_in": [256, 14, 14],
              "junction_out": [14, 14, 384], "chain": chain},
        params=P.ParamCounts(teacher=28288354, student=11689512, fused_total=24000000, shared_with_teacher=7000000,
                             shared_with_student=2800000, new_learnable=1300000),
        mult_adds=2_345_678_901, img_size=img, num_classes=req.num_classes, depth=depth, summary=summary)


def fuse(args: list[str]) -> dict:
    req = P.FuseRequest(id=0, teacher=args[0], student=args[1], img_size=int(opt(args, "--img-size", "224")),
                        split=int(opt(args, "--split", "3")), order=opt(args, "--order", "auto"),
                        depth=int(opt(args, "--depth", "3")))
    try:
        return P.plain(fuse_result(req))
    except FakeError as err:
        fail(err.message, err.hint)
        raise


def log_call(argv: list[str]) -> None:
    if os.environ.get("FBT_FAKE_CALLS"):  # tests read which commands the TUI asked for
        with open(os.environ["FBT_FAKE_CALLS"], "a", encoding="utf-8") as fh:
            fh.write(" ".join(argv) + "\n")


def as_command(req: P.Request) -> list[str]:
    """The CLI command a service request stands for (what FBT_FAKE_CALLS records)."""
    if isinstance(req, P.ModelsRequest):
        return ["models", "--json"] + ([] if req.counts else ["--no-counts"])
    if isinstance(req, P.FuseRequest):
        argv = [req.OP, req.teacher, req.student, "--json", "--img-size", str(req.img_size), "--order", req.order,
                "--split", str(req.split), "--depth", str(req.depth)]
        argv += ["--mixer", req.mixer] if req.mixer != "auto" else []
        for role, kwargs in (("teacher", req.teacher_kwargs), ("student", req.student_kwargs)):
            argv += [f"--{role}-kwargs", json.dumps(kwargs)] if kwargs else []
        return argv
    if isinstance(req, P.ValidateRequest):
        return ["validate", req.preset]
    return [req.OP]


def answer(req: P.Request) -> object:
    """The result of one service request (raises FakeError for an error answer)."""
    if isinstance(req, P.ModelsRequest):
        return [P.CatalogEntry(**{**m, "params": m["params"] if req.counts else None}) for m in models_json()]
    if isinstance(req, P.SummaryRequest):
        r = fuse_result(req)
        return P.SummaryResult(depth=r.depth, summary=r.summary, mult_adds=r.mult_adds)
    if isinstance(req, P.FuseRequest):
        return fuse_result(req)
    if isinstance(req, P.ValidateRequest):
        if not Path(req.preset).is_file():
            raise FakeError("config_error", f"preset file {req.preset!r} does not exist", "give a path to a .toml preset")
        return P.ValidateResult(preset=req.preset, valid=True, quick=req.quick, checks=["types, names and ranges"])
    return P.CancelResult(target=getattr(req, "target", None), cancelled=False)  # nothing is ever still running


def serve() -> None:
    """`serve`: the service protocol on stdin/stdout, from fbt_engine.protocol's dataclasses.
    $FBT_FAKE_SERVE_DELAY: seconds before each fuse/summary answer. $FBT_FAKE_SCENARIO=serve-crash:
    die with a traceback at the first fuse."""
    out = sys.stdout
    out.write(P.encode(P.Ready(pid=os.getpid(), warm_s=0.0, versions={"fbt_engine": "fake"}, ops=list(P.REQUESTS))))
    out.flush()
    delay = float(os.environ.get("FBT_FAKE_SERVE_DELAY", "0"))
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        try:
            req = P.parse_request(line)
        except P.ProtocolError as exc:
            message = P.ErrorResponse(id=exc.id, error=P.ErrorInfo(kind="bad_request", message=exc.message, hint=exc.hint))
        else:
            log_call(as_command(req))
            if isinstance(req, P.FuseRequest) and os.environ.get("FBT_FAKE_SCENARIO") == "serve-crash":
                print("Traceback (most recent call last):\nRuntimeError: the fake engine fell over", file=sys.stderr,
                      flush=True)
                os._exit(1)
            if isinstance(req, P.FuseRequest) and delay:
                time.sleep(delay)
            try:
                message = P.Response(id=req.id, result=answer(req))
            except FakeError as err:
                message = P.ErrorResponse(id=req.id, error=P.ErrorInfo(kind=err.kind, message=err.message, hint=err.hint))
        out.write(P.encode(message))
        out.flush()


def _ev(type: str, **data) -> bytes:
    return json.dumps({"v": 1, "type": type, "run": "quick", "t": 1.0, **data}).encode()


# Lines a reader must survive: each is shown as log text or ignored (see test_tui_faults.py).
MALFORMED = [
    b"garbage text, not json at all",
    b"invalid utf-8: \xff\xfe\xc3\x28 end",
    b"{" + b"x" * 1_000_000,  # a 1 MB line
    b"[1, 2, 3]", b'"just a string"', b"null", b"42", b'{"no_type": true}',
    b"\x1b[2J\x1b[31mterminal escapes\x07",
    b"[/b] [bold red]rich markup[/] [link=x]",
    _ev("wibble", data=[1, 2]),  # an unknown event type
    b'{"v":"x","type":"log","run":5,"t":"soon","level":"warn","message":{"a":1}}',
    _ev("step", phase="distill", epoch=1, step="abc", loss=1.0),
    _ev("step", phase="distill", epoch="x", step=1, steps_per_epoch={}, loss="nan", terms=[1, 2]),
    _ev("step", phase="distill", epoch=1, step=2, loss=None, terms="abc", lr="fast", eta_s=[1]),
    _ev("step", phase="distill", epoch=1, step=3, loss="1e999", terms={"ce": "nan", "kd": None}),
    _ev("eval", phase="distill", epoch="abc", student_top1=50.0),
    _ev("eval", phase="distill", epoch=1, student_top1="x", fused_top1=[1], teacher_top1={}),
    _ev("checkpoint", path=None, epoch=[], best="yes"),
    _ev("phase", phase="distill", epochs="many", steps_per_epoch=None),
]
TORN = b'{"v":1,"type":"step","run":"quick","t":9.9,"ste'


class Out:
    """Writes each event to events.jsonl and stdout; survives the TUI closing its pipe."""

    def __init__(self, run: str, path: Path) -> None:
        self.run, self.path, self.t0, self.stdout_ok = run, path, time.monotonic(), True

    def emit(self, type: str, **data) -> None:
        line = encode(Event(type=type, run=self.run, t=round(time.monotonic() - self.t0, 3), data=data))
        self.raw(line.encode("utf-8"))

    def raw(self, data: bytes) -> None:
        """Write bytes as they are (malformed lines, torn halves) to the file and stdout."""
        with open(self.path, "ab") as fh:
            fh.write(data)
        if self.stdout_ok:
            try:
                sys.stdout.buffer.write(data)
                sys.stdout.buffer.flush()
            except (BrokenPipeError, OSError):
                self.stdout_ok = False  # the TUI left: keep going, write the file only


def scenario_of(preset: str) -> str:
    env = os.environ.get("FBT_FAKE_SCENARIO", "")
    if env:
        return env
    stem = Path(preset).stem
    return next((s for s in ("fail", "crash", "fast", "slow") if s in stem), "normal")


WORLD = 1  # `run --gpus N`: N ranks, each with its own throughput in the step events


def step_event(out: Out, step: int, steps: int, epochs: int, delay: float, **extra) -> None:
    loss = 3.0 / (1 + 0.1 * step)
    if WORLD > 1:  # rank r is a little slower than rank 0, so the ranks' columns differ
        extra = {"rank_samples_per_s": [round(1234.5 / WORLD * (1 - 0.1 * r), 2) for r in range(WORLD)], **extra}
    out.emit("step", phase="distill", epoch=(step - 1) // steps + 1, step=step, steps_per_epoch=steps,
             lr=1e-3 * (1 - step / (epochs * steps + 1)), loss=round(loss * 1.6, 5),
             terms={"ce": round(loss, 5), "ofa/t->s": round(loss * 0.4, 5), "nce/f->s": round(loss * 0.2, 5)},
             samples_per_s=1234.5, eta_s=round((epochs * steps - step) * delay, 2), **extra)


def fault(out: Out, scenario: str, step: int) -> None:
    """The fault scenarios' misbehaviour at `step` of epoch 2 (nothing for other scenarios)."""
    if scenario == "segv" and step == 10:
        print("about to touch freed memory", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
    if scenario == "orphan" and step == 10:
        import subprocess  # a grandchild that inherits stdout/stderr and outlives us for a while
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(8)"])
        print("worker started; now the engine dies", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    if scenario == "garbage" and step == 10:
        for line in MALFORMED:
            out.raw(line + b"\n")
        whole = encode(Event(type="log", run=out.run, t=1.0, data={"level": "info", "message": "joined halves"}))
        out.raw(whole[:20].encode())  # one event written in two halves: read as one line
        time.sleep(0.3)
        out.raw(whole[20:].encode())


def flood(out: Out, cfg: dict) -> None:
    """Step events at $FBT_FAKE_RATE per second for $FBT_FAKE_SECONDS, on an absolute schedule."""
    rate, seconds = float(os.environ.get("FBT_FAKE_RATE", "1000")), float(os.environ.get("FBT_FAKE_SECONDS", "30"))
    total = int(rate * seconds)
    out.emit("started", config=cfg, method="fbt", teacher="swin_tiny_patch4_window7_224", student="resnet18",
             device="cpu", world_size=1, params={}, pid=os.getpid(), resumed=False)
    out.emit("phase", phase="distill", epochs=1, steps_per_epoch=total)
    t0 = time.monotonic()
    for step in range(1, total + 1):
        if step % 10 == 0 and (ahead := t0 + step / rate - time.monotonic()) > 0:
            time.sleep(ahead)
        step_event(out, step, total, 1, 1 / rate)
        if STOP:
            return finish(out, "stopped", (0, 0.0), 1, t0)
    finish(out, "completed", (0, 0.0), 1, t0)


def read_preset(path: str) -> dict:
    import tomllib
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        fail(f"preset file {path!r} does not exist or is not TOML", "give a path to a .toml preset")
    return {}


def train(out: Out, cfg: dict, scenario: str, start_epoch: int = 1, resumed: bool = False) -> None:
    epochs = int(cfg.get("train", {}).get("epochs", 3))
    steps = 25 if scenario == "fast" else 8
    if scenario == "fast":
        epochs = max(epochs, 20)
    delay = float(os.environ.get("FBT_FAKE_DELAY", "0.02" if scenario == "fast" else "0.05"))
    t0 = time.monotonic()
    out.emit("started", config=cfg, method=cfg.get("method", "fbt"),
             teacher=cfg.get("teacher", {}).get("model", "swin_tiny_patch4_window7_224"),
             student=cfg.get("student", {}).get("model", "resnet18"), device="cpu", world_size=WORLD,
             params={"fused_total": 24000000}, pid=os.getpid(), resumed=resumed)
    out.emit("phase", phase="distill", epochs=epochs, steps_per_epoch=steps)
    best = (0, 0.0)
    for epoch in range(start_epoch, epochs + 1):
        for i in range(1, steps + 1):
            step = (epoch - 1) * steps + i
            if scenario == "fail" and epoch == 2 and i == 3:
                out.emit("failed", kind="nan_loss", message="loss became NaN at step "
                         f"{step} (term ofa/t->s)", hint="lower train.lr or set train.grad_clip",
                         step=step, term="ofa/t->s")
                raise SystemExit(1)
            if scenario == "crash" and epoch == 2 and i == 2:
                print("Traceback (most recent call last):\n  File \"trainer.py\", line 1\n"
                      "RuntimeError: CUDA error: an illegal memory access was encountered",
                      file=sys.stderr, flush=True)
                os._exit(1)
            fault(out, scenario, step)
            if scenario == "warn" and epoch == 2 and i == 1:
                out.emit(P.HealthWarning.TYPE, **P.plain(P.HealthWarning(
                    signal="fused_spread", rule="collapse", value=0.004, threshold=0.02, phase="distill",
                    epoch=epoch, step=step, message="fused_spread = 0.004, below the threshold 0.02: the fused "
                    "features collapse", hint="check the L2G normalisation")))
            time.sleep(delay)
            step_event(out, step, steps, epochs, delay)
            if STOP:
                return finish(out, "stopped", best, epoch, t0)
        top1 = round(40 + 50 * (1 - 1 / (1 + epoch)), 2)
        out.emit("eval", phase="distill", epoch=epoch, student_top1=top1, student_top5=min(100, top1 + 8),
                 fused_top1=round(top1 + 3, 2), teacher_top1=92.5)
        is_best = top1 > best[1]
        best = (epoch, top1) if is_best else best
        out.emit("checkpoint", path=str(out.path.parent / "checkpoints" / "last.pt"), epoch=epoch, best=is_best)
        print(f"epoch {epoch}/{epochs} student top1 {top1}", file=sys.stderr, flush=True)
    finish(out, "completed", best, epochs, t0)
    if scenario == "garbage":
        out.raw(TORN)  # the process ends in the middle of a line


def finish(out: Out, reason: str, best: tuple[int, float], epoch: int, t0: float) -> None:
    evals = {"student_top1": best[1], "fused_top1": round(best[1] + 3, 2), "teacher_top1": 92.5}
    out.emit("finished", reason=reason, best={"epoch": best[0], "student_top1": best[1]},
             last={"epoch": epoch, "student_top1": best[1]}, duration_s=round(time.monotonic() - t0, 2),
             student_path=str(out.path.parent / "student.safetensors"),
             best_eval={"epoch": best[0], **evals}, last_eval={"epoch": epoch, **evals})


def on_sigint(*_: object) -> None:
    global STOP
    STOP = True


def run(args: list[str]) -> None:
    global WORLD
    preset = args[0]
    WORLD = int(opt(args, "--gpus", "1"))
    cfg = read_preset(preset)
    name = opt(args, "--name", cfg.get("name", Path(preset).stem))
    run_dir = Path(opt(args, "--runs-dir", cfg.get("runs_dir", "runs"))) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(Path(preset).read_text(encoding="utf-8"), encoding="utf-8")
    print(f"run {name} in {run_dir}", file=sys.stderr, flush=True)
    out, scenario = Out(name, run_dir / "events.jsonl"), scenario_of(preset)
    flood(out, cfg) if scenario == "flood" else train(out, cfg, scenario)


def compare(args: list[str]) -> None:
    """A sweep over `method` (the real one: fbt_engine/sweep.py); the cells run one after another."""
    cfg = read_preset(args[0])
    methods, seeds = opt(args, "--methods", "scratch,kd,fbt").split(","), opt(args, "--seeds", "0").split(",")
    folder = Path(opt(args, "--runs-dir", "runs")) / opt(args, "--name", f"{cfg.get('name', 'quick')}-compare")
    folder.mkdir(parents=True)
    cells = [{"name": f"{m}_s{s}", "overrides": [["method", m], ["seed", s]]} for m in methods for s in seeds]
    manifest = {"version": 1, "source": args[0], "base": cfg, "grid": [{"key": "method", "values": methods}],
                "seeds": [int(s) for s in seeds], "jobs": 1, "cells": cells}
    (folder / "sweep.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    print(f"sweep {folder}: {len(cells)} runs", file=sys.stderr, flush=True)
    sweep_cells(folder)


def sweep_cells(folder: Path) -> None:
    manifest = json.loads((folder / "sweep.json").read_text(encoding="utf-8"))
    for cell in manifest["cells"]:
        run_dir, events = folder / cell["name"], folder / cell["name"] / "events.jsonl"
        if events.is_file() and any(getattr(e, "type", "") == "finished" and e.get("reason") == "completed"
                                    for e in read_events(events)):
            continue
        run_dir.mkdir(exist_ok=True)
        overrides = dict(cell["overrides"])
        cfg = {**manifest["base"], "name": cell["name"], "method": overrides["method"], "seed": int(overrides["seed"])}
        (run_dir / "config.toml").write_text(f'name = "{cell["name"]}"\nmethod = "{cfg["method"]}"\n', encoding="utf-8")
        out = Out(cell["name"], run_dir / "events.jsonl")
        out.stdout_ok = False
        train(out, cfg, "normal")
        if STOP:
            raise SystemExit(130)


def resume(args: list[str]) -> None:
    run_dir = Path(args[0])
    if (run_dir / "sweep.json").is_file():
        return sweep_cells(run_dir)
    cfg = read_preset(str(run_dir / "config.toml"))
    done = [e for e in read_events(run_dir / "events.jsonl") if getattr(e, "type", "") == "eval"]
    start = (int(done[-1].get("epoch")) + 1) if done else 1
    print(f"resuming {run_dir.name} at epoch {start}", file=sys.stderr, flush=True)
    train(Out(run_dir.name, run_dir / "events.jsonl"), cfg, "normal", start_epoch=start, resumed=True)


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, on_sigint)
    if not argv:
        fail("no command given", "use models, fuse, run, resume or validate")
    cmd, args = argv[0], argv[1:]
    if cmd != "serve":
        log_call(argv)  # the service logs each request as the command it stands for
    if cmd == "models":
        counted = "--no-counts" not in args  # like the engine: counts only when asked to compute them
        print(json.dumps([{**m, "params": m["params"] if counted else None} for m in models_json()]))
    elif cmd == "fuse":
        print(json.dumps(fuse(args)))
    elif cmd == "run":
        run(args)
    elif cmd == "resume":
        resume(args)
    elif cmd == "compare":
        compare(args)
    elif cmd == "validate":
        read_preset(args[0])
    elif cmd == "serve":
        serve()
    else:
        fail(f"unknown command {cmd!r}", "use models, fuse, serve, run, resume or validate")


if __name__ == "__main__":
    main(sys.argv[1:])
