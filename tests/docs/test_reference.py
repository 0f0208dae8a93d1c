"""The node reference cannot drift from the nodes: the inputs tables of web/docs/*.md and the whole
of docs/nodes.md are what ``python -m devtools.docs`` writes from the schemas and the settings table."""

from __future__ import annotations

import pytest

from devtools import docs


@pytest.fixture(scope="module")
def classes(host):
    return host.pack_module.nodes.NODES


def test_generated_reference_is_up_to_date(classes):
    stale = [str(p.relative_to(docs.REPO)) for p, text in docs.expected_files(classes).items()
             if not p.is_file() or p.read_text(encoding="utf-8") != text]
    assert not stale, f"out of date (run python -m devtools.docs): {stale}"


def test_every_table_setting_row_states_default_range_and_paper(classes):
    from zoodip.settings import SETTINGS, fmt

    text = docs.REFERENCE.read_text(encoding="utf-8")
    for name in ("steps", "learning_rate", "perturbation", "queries", "t_min", "t_max", "tau", "nu"):
        s = SETTINGS[name]
        rows = [ln for ln in text.splitlines() if ln.startswith(f"| `{name}`")]
        assert rows, name
        for row in rows:
            assert f"| {fmt(s.default)} |" in row, row
            assert s.range_text() in row and s.paper_text()[1:] in row, row


def test_train_token_page_names_every_supported_family(host):
    supported = host.pack_module.nodes.host.SUPPORTED_TEXT
    text = (docs.WEB_DOCS / "ZOODiPTrainToken.md").read_text(encoding="utf-8")
    assert f"Supported: {supported}" in " ".join(text.split())


def test_per_family_table_states_the_papers_values():
    """docs/nodes.md's table of per-family settings is prose; its mu and PUTS band must be the table's."""
    from zoodip.settings import FAMILIES, paper_value

    text = docs.REFERENCE.read_text(encoding="utf-8")
    for family in FAMILIES:
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| {family} |"))
        mu = paper_value("perturbation", family)
        assert f"| {mu:.0e}".replace("e-0", "e-") in row, (family, row)
        assert f"{paper_value('t_min', family)}-{paper_value('t_max', family)}" in row, (family, row)
