"""Settings several services share are one group, read the same way by each, with the rules
between them checked where they are defined."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.context.main import ContextServiceSettings
from services.gateway.settings import GatewaySettings
from services.projector.main import ProjectorSettings
from services.ratelimit.main import RateLimitSettings
from services.room.main import RoomSettings


def test_the_ai_timeouts_are_one_group_for_the_room_and_the_context(monkeypatch):
    monkeypatch.setenv("DURACHAT_AI_MAX_DURATION", "60")
    monkeypatch.setenv("DURACHAT_AI_STALL_TIMEOUT", "20")
    monkeypatch.setenv("DURACHAT_AI_CHUNK_TIMEOUT", "10")
    monkeypatch.setenv("DURACHAT_AI_FIRST_CHUNK_TIMEOUT", "15")
    room, context = RoomSettings(), ContextServiceSettings()
    for settings in (room, context):
        assert (settings.ai_max_duration, settings.ai_stall_timeout) == (60, 20)
        assert settings.ai_chunk_timeout == 10


@pytest.mark.parametrize("settings", [RoomSettings, ContextServiceSettings])
def test_a_stall_timeout_not_above_the_chunk_timeouts_is_refused(monkeypatch, settings):
    # The room would close a reply whose streamer is only waiting out a slow chunk.
    monkeypatch.setenv("DURACHAT_AI_STALL_TIMEOUT", "30")
    with pytest.raises(ValidationError, match="DURACHAT_AI_STALL_TIMEOUT .* above the chunk timeouts"):
        settings()
    monkeypatch.setenv("DURACHAT_AI_FIRST_CHUNK_TIMEOUT", "29")
    monkeypatch.setenv("DURACHAT_AI_CHUNK_TIMEOUT", "29")
    assert settings().ai_stall_timeout == 30


def test_the_rate_rule_and_the_read_store_are_read_once_for_every_service(monkeypatch, tmp_path):
    monkeypatch.setenv("DURACHAT_RATE_INTERVAL", "2")
    monkeypatch.setenv("DURACHAT_READ_DB", str(tmp_path / "r.db"))
    assert GatewaySettings().rate_interval == RateLimitSettings().rate_interval == 2
    assert GatewaySettings().read_db == ProjectorSettings().read_db == tmp_path / "r.db"
