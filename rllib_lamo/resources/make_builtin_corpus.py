"""Rebuild ``wikipedia_en_sample.jsonl.xz``, the offline English corpus behind ``"builtin"``.

The source is the shortened English Wikipedia dump that gensim ships as test data
(``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``
inside the gensim wheel). Wikipedia text is CC BY-SA; see README.md next to this file.
Kept in the repository (not installed) so the shipped file can be regenerated and audited:

    pip download gensim --no-deps -d /tmp/gensim
    python rllib_lamo/resources/make_builtin_corpus.py /tmp/gensim/gensim-*.whl

Wiki markup is stripped with a few rules (templates, tables, references, files and categories
removed; links replaced by their label; reference-like sections dropped), which is plenty for a
language-modelling regulariser; it is not a faithful wikitext renderer.
"""

from __future__ import annotations

import argparse
import bz2
import html
import json
import lzma
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

DUMP_IN_WHEEL = (
    "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
OUTPUT = Path(__file__).with_name("wikipedia_en_sample.jsonl.xz")
DROPPED_SECTIONS = {
    "references",
    "external links",
    "see also",
    "further reading",
    "notes",
    "bibliography",
    "sources",
    "footnotes",
    "citations",
    "notes and references",
}
MIN_ARTICLE_WORDS = 200


def _remove_nested(text: str, opening: str, closing: str) -> str:
    """Delete balanced ``opening ... closing`` spans, innermost first (templates nest)."""
    pattern = re.compile(
        re.escape(opening) + r"(?:(?!" + re.escape(opening) + r").)*?" + re.escape(closing),
        re.DOTALL,
    )
    while True:
        text, count = pattern.subn("", text)
        if count == 0:
            return text


def _replace_links(text: str) -> str:
    """``[[target|label]]`` -> label, ``[[target]]`` -> target; files and categories vanish."""
    link = re.compile(r"\[\[([^\[\]]*)\]\]")
    while True:

        def label(match: re.Match[str]) -> str:
            inner = match.group(1)
            namespace = inner.split(":", 1)[0].strip().lower() if ":" in inner else ""
            if namespace in {"file", "image", "category", "media"} or len(namespace) in (2, 3):
                return ""  # files, categories and interlanguage links (e.g. "de:...")
            return inner.split("|")[-1]

        text, count = link.subn(label, text)
        if count == 0:
            return text


def clean_wikitext(text: str) -> str:
    """Plain paragraphs from one article's wikitext."""
    text = re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)
    text = re.sub(r"<ref[^>]*/>", "", text)
    text = re.sub(r"<ref[^>]*>.*?</ref>", "", text, flags=re.DOTALL)
    text = re.sub(
        r"<(gallery|math|timeline|score|source|syntaxhighlight)[^>]*>.*?</\1>",
        "",
        text,
        flags=re.DOTALL,
    )
    text = _remove_nested(text, "{{", "}}")
    text = _remove_nested(text, "{|", "|}")
    text = _replace_links(text)
    text = re.sub(r"\[https?://[^\s\]]+\s+([^\]]+)\]", r"\1", text)
    text = re.sub(r"\[?https?://[^\s\]]+\]?", "", text)
    text = re.sub(r"<[^>]+>", "", text)
    text = html.unescape(text).replace("'''", "").replace("''", "")

    paragraphs: list[str] = []
    dropping = False
    for raw_line in text.splitlines():
        line = raw_line.strip()
        heading = re.fullmatch(r"(=+)\s*(.*?)\s*\1", line)
        if heading:
            dropping = heading.group(2).lower() in DROPPED_SECTIONS
            if not dropping:
                paragraphs.append(heading.group(2))
            continue
        if dropping:
            continue
        line = re.sub(r"^[*#:;]+\s*", "", line)
        line = re.sub(r"\s+", " ", line).strip()
        if len(line.split()) >= 4 and not line.startswith(("|", "!", "__", "[[")):
            paragraphs.append(line)
    return "\n".join(paragraphs)


def articles(dump_xml: bytes) -> Iterator[dict[str, str]]:
    """Main-namespace, non-redirect pages with their title and revision URL."""
    root = ElementTree.fromstring(dump_xml)
    ns = root.tag.split("}")[0] + "}"
    for page in root.iter(ns + "page"):
        wikitext = page.findtext(f"{ns}revision/{ns}text") or ""
        if page.findtext(ns + "ns") != "0" or wikitext.lower().startswith("#redirect"):
            continue
        title = page.findtext(ns + "title") or ""
        if "(disambiguation)" in title:
            continue
        text = clean_wikitext(wikitext)
        if len(text.split()) >= MIN_ARTICLE_WORDS:
            revision = page.findtext(f"{ns}revision/{ns}id")
            url = f"https://en.wikipedia.org/w/index.php?oldid={revision}"
            yield {"title": title, "url": url, "text": text}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gensim_wheel", type=Path, help="a downloaded gensim wheel")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    with zipfile.ZipFile(args.gensim_wheel) as wheel:
        dump_xml = bz2.decompress(wheel.read(DUMP_IN_WHEEL))
    rows = list(articles(dump_xml))
    with lzma.open(args.output, "wt", encoding="utf-8", preset=9) as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    words = sum(len(row["text"].split()) for row in rows)
    print(f"{len(rows)} articles, {words} words -> {args.output}")


if __name__ == "__main__":
    main()
