"""The TUI's service client (fbt_tui/service.py) against the fake engine's `serve`: answers by id,
errors as sentence + hint, supersede, cancel, restart after a crash, a clean shutdown."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from fbt_tui.service import EngineService, ServiceError, Superseded

pytestmark = pytest.mark.asyncio
SWIN, R18 = "swin_tiny_patch4_window7_224", "resnet18"


async def test_answers_by_id(fake_engine, workdir) -> None:
    service = EngineService()
    await service.start()
    try:
        fused, models = await asyncio.gather(service.fuse(SWIN, R18, img_size=64, split=2, depth=4),
                                             service.models(counts=True))
        assert fused["plan"]["chain"].startswith("resnet18 stem..stage2")
        assert fused["student"]["stages"][0]["shape"] == [64, 16, 16] and "Block4-1" in fused["summary"]
        assert len(models) == 13 and models[0]["params"]
        summary = await service.summary(SWIN, R18, depth=1)
        assert set(summary) == {"depth", "summary", "mult_adds"}
        assert (await service.validate("quick.toml"))["valid"] is True
        assert service.ready is not None and "fuse" in service.ready.ops
    finally:
        await service.close()
    assert service.proc is not None and service.proc.returncode == 0  # it left at EOF


async def test_errors_carry_sentence_hint_and_kind(fake_engine, workdir) -> None:
    service = EngineService()
    try:
        with pytest.raises(ServiceError) as info:
            await service.fuse(SWIN, "levit_128")
        assert info.value.kind == "model_error" and "no 4-stage adapter" in info.value.message
        assert "fusable" in info.value.hint
        with pytest.raises(ServiceError) as info:
            await service.fuse(SWIN, R18, img_size=4)
        assert info.value.kind == "config_error" and "out of range" in info.value.message
        with pytest.raises(ServiceError) as info:
            await service.validate("missing.toml")
        assert "missing.toml" in info.value.message
    finally:
        await service.close()


async def test_newer_preview_supersedes_older(fake_engine, workdir, monkeypatch) -> None:
    monkeypatch.setenv("FBT_FAKE_SERVE_DELAY", "0.3")
    service = EngineService()
    try:
        older = asyncio.ensure_future(service.fuse(SWIN, R18, split=1))
        await asyncio.sleep(0.05)
        newer = await service.fuse(SWIN, R18, split=2)
        with pytest.raises(Superseded):
            await older
        assert "stem..stage2" in newer["plan"]["chain"]
    finally:
        await service.close()


async def test_cancelling_the_caller_cancels_the_request(fake_engine, workdir, monkeypatch) -> None:
    calls = workdir / "calls.txt"
    monkeypatch.setenv("FBT_FAKE_CALLS", str(calls))
    monkeypatch.setenv("FBT_FAKE_SERVE_DELAY", "0.3")
    service = EngineService()
    try:
        task = asyncio.ensure_future(service.fuse(SWIN, R18))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert (await service.models())[0]["name"] == R18  # still serving
        assert not service._pending
    finally:
        await service.close()
    assert "cancel" in calls.read_text().splitlines()


async def test_crash_is_a_clear_error_then_a_restart(fake_engine, workdir, monkeypatch) -> None:
    monkeypatch.setenv("FBT_FAKE_SCENARIO", "serve-crash")
    service = EngineService()
    try:
        with pytest.raises(ServiceError) as info:
            await service.fuse(SWIN, R18)
        assert info.value.kind == "engine_exited" and "exit code 1" in info.value.message
        assert "the fake engine fell over" in info.value.message and "restarted" in info.value.hint
        first = service.proc
        assert (await service.models())[0]["name"] == R18  # a new child answers
        assert service.proc is not first
        for _ in range(2):
            with pytest.raises(ServiceError):
                await service.fuse(SWIN, R18)
        with pytest.raises(ServiceError) as info:  # three deaths in a minute: no fourth start
            await service.models()
        assert "stopped 3 times" in info.value.message and "fbt-engine serve" in info.value.hint
    finally:
        await service.close()


async def test_missing_engine_command(workdir) -> None:
    service = EngineService(command=[str(workdir / "no-such-engine")])
    with pytest.raises(ServiceError) as info:
        await service.models()
    assert info.value.kind == "engine_not_found" and "FBT_ENGINE" in info.value.hint


async def test_close_ends_a_busy_child(fake_engine, workdir, monkeypatch) -> None:
    monkeypatch.setenv("FBT_FAKE_SERVE_DELAY", "30")
    service = EngineService()
    task = asyncio.ensure_future(service.fuse(SWIN, R18))
    await asyncio.sleep(0.3)
    await asyncio.wait_for(service.close(), 15)
    assert service.proc is not None and service.proc.returncode is not None
    with pytest.raises(ServiceError):
        await task


async def test_service_client_never_imports_torch() -> None:
    code = "import fbt_tui.service, sys; assert not [m for m in ('torch', 'timm') if m in sys.modules]"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, cwd=Path(__file__).resolve().parents[2])
    assert await asyncio.wait_for(proc.wait(), 60) == 0
