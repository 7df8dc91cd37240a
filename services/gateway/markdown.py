"""A finished AI reply as safe HTML: markdown-it-py renders it, nh3 (ammonia) sanitizes it.

Raw HTML in the reply is never markup (markdown-it's `html` option is off, so it is escaped
as text), and what the renderer makes passes nh3's allow-list: text formatting, lists, code,
quotes, tables and links (http, https, mailto only; rel="noopener noreferrer nofollow").
Images become links to the image, so a reply loads nothing by itself. The web client inserts
only this HTML, never the message text, as markup.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererHTML
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

TAGS = {
    "p", "br", "hr", "strong", "em", "del", "s", "code", "pre", "blockquote",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6", "a",
    "table", "thead", "tbody", "tr", "th", "td",
}
ATTRIBUTES = {"a": {"href", "title"}, "ol": {"start"}, "th": {"style"}, "td": {"style"}}
SCHEMES = {"http", "https", "mailto"}


def _image_as_link(
    renderer: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType
) -> str:
    token = tokens[idx]
    label = renderer.renderInlineAsText(token.children or [], options, env) or "image"
    src = escapeHtml(str(token.attrGet("src") or ""))
    return f'<a href="{src}">{escapeHtml(label)}</a>'


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.add_render_rule("image", _image_as_link)
    return md


_MD = _parser()


@lru_cache(maxsize=512)
def render(text: str) -> str:
    """`text` (markdown) as sanitized HTML; the same text always gives the same HTML."""
    return nh3.clean(
        _MD.render(text),
        tags=TAGS,
        attributes=ATTRIBUTES,
        url_schemes=SCHEMES,
        link_rel="noopener noreferrer nofollow",
        filter_style_properties={"text-align"},
        strip_comments=True,
    )
