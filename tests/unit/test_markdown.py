"""A finished AI reply's markdown as sanitized HTML, and the AI message frame that carries it."""

from __future__ import annotations

import json

from contracts.room import ChatMessage, reply_id_of
from services.gateway import protocol
from services.gateway.markdown import render
from services.room import domainmodel


def test_markdown_is_rendered() -> None:
    html = render("**bold** and `code`\n\n- one\n- two\n\n```\nx = 1\n```")
    assert "<strong>bold</strong>" in html and "<code>code</code>" in html
    assert "<li>one</li>" in html and "<pre><code>x = 1\n</code></pre>" in html


def test_raw_html_and_scripts_are_text_and_dangerous_links_are_not_links() -> None:
    html = render("<script>alert(1)</script> <img src=x onerror=alert(1)> [a](javascript:alert(1))"
                  " <a href='https://e.com' onclick='x()'>b</a>")
    assert "<script" not in html and "<img" not in html and "<a href='" not in html
    assert "&lt;script&gt;" in html and "&lt;a href=" in html and 'href="javascript' not in html


def test_links_get_rel_and_images_become_links() -> None:
    html = render("[docs](https://e.com/d) ![cat](https://e.com/c.png)")
    assert '<a href="https://e.com/d" rel="noopener noreferrer nofollow">docs</a>' in html
    assert '<a href="https://e.com/c.png" rel="noopener noreferrer nofollow">cat</a>' in html
    assert "<img" not in html


def test_only_ai_messages_carry_html_and_history_names_the_asker() -> None:
    question = ChatMessage(id="m1", name="alice", message="@ai why?", timestamp=1)
    answer = ChatMessage(id=reply_id_of("m1"), name="AI", message="*because*", timestamp=2, kind="ai")
    orphan = ChatMessage(id="r-unknown", name="AI", message="hi", timestamp=3, kind="ai")
    frames = [json.loads(f) for f in protocol.history_frames([question, answer, orphan])]
    assert "html" not in frames[0] and "asker" not in frames[0]
    assert frames[1]["html"] == "<p><em>because</em></p>\n" and frames[1]["asker"] == "alice"
    assert "asker" not in frames[2]
    # The demo's keys are unchanged; the extensions are extra.
    assert {k: frames[1][k] for k in ("name", "message", "timestamp")} == {
        "name": "AI", "message": "*because*", "timestamp": 2,
    }


def test_the_reply_id_is_the_one_the_room_derives() -> None:
    assert domainmodel.reply_id_of("m1") == reply_id_of("m1")
