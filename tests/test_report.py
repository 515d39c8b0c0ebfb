"""The HTML report is self-contained, and its numbers are the summaries'."""

import base64
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pamstore import build
from pam.analysis.report import build_report, diel_title, publish_artifacts, species_site_plot, species_summary
from test_summaries import CONF, RECS


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("rep")
    store = build(root / "store", RECS)
    return build_report(store, root / "out", CONF, model_id="m1", top=2)


def test_page_is_self_contained(report):
    page = report.html_path.read_text()
    assert "http" not in page.lower()  # no links, scripts, fonts or images from the network
    assert "<link" not in page and "<script src" not in page and page.count("<script>") == 1  # the table sorter
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 3 == report.figures
    assert all(base64.b64decode(img)[:8] == b"\x89PNG\r\n\x1a\n" for img in images)
    assert "<h2>Species</h2>" in page and "<h2>Sites: effort and richness</h2>" in page


def test_species_rows_match_hand_counts(report):
    rows = {r["species"]: r for r in report.species_rows}
    # m1 only: owl 3 at A, 2 at B, 2 at C; wren 1+1 at A, 1 at B
    assert rows["owl"]["detections"] == 7 and rows["wren"]["detections"] == 3
    assert rows["owl"]["sites"] == 3 and rows["wren"]["sites"] == 2
    # surveyed site-days: A 3, B 3, C 2 = 8; owl detected on A 05-01, B 04-30, B 05-01, C 05-01, C 05-02
    assert (rows["owl"]["site_days_detected"], rows["owl"]["site_days_surveyed"]) == (5, 8)
    assert rows["owl"]["naive_occupancy"] == 1.0 and rows["wren"]["naive_occupancy"] == pytest.approx(0.667)
    assert "| owl | 7 | 3 | 5 / 8 |" in report.markdown


def test_precision_is_hidden_and_explained_when_nothing_was_reviewed(report):
    page = report.html_path.read_text()
    species_table = page.split("<h2>Species</h2>")[1].split("<h2>")[0]
    assert "<th>precision</th>" not in species_table
    assert "none of these detections has been reviewed yet (pam review, then pam review-import" in species_table
    assert "precision |" not in report.markdown and "none of these detections has been reviewed" in report.markdown
    assert all(r["precision"] is None for r in report.species_rows)  # the artifact rows keep the column


def test_precision_shows_not_reviewed_for_species_without_verdicts(tmp_path):
    import pandas as pd

    from pam.analysis.summaries import summarize

    store = build(tmp_path / "store", RECS)
    summary = summarize(store, CONF, model_id="m1")
    summary.tables["precision"] = pd.DataFrame({"label": ["owl"], "model_id": ["m1"], "verified_true": [3],
                                                "verified_false": [1], "unsure": [0], "precision": [0.75]})
    rep = build_report(store, tmp_path / "out", CONF, summary=summary)
    species_table = rep.html_path.read_text().split("<h2>Species</h2>")[1].split("<h2>")[0]
    assert "<th>precision</th>" in species_table and "reviewed yet" not in species_table
    rows = re.findall(r"<tr><td>(\w+)</td>.*?</tr>", species_table)
    assert rows == ["owl", "wren"]
    assert re.search(r"<tr><td>owl</td>.*<td>0.75</td></tr>", species_table)
    assert re.search(r"<tr><td>wren</td>.*<td>not reviewed</td></tr>", species_table)
    assert "| owl | 7 | 3 | 5 / 8 | 0.75 |" in rep.markdown and "| wren | 3 | 2 | 3 / 8 | not reviewed |" in rep.markdown


@pytest.mark.parametrize("species, top, title", [
    (["owl"], 6, "Diel activity of owl"),
    (["owl", "wren"], 6, "Diel activity of owl and wren"),
    (["owl", "wren", "jay"], 3, "Diel activity of owl, wren and jay"),
    (["owl", "wren", "jay", "tit"], 6, "Diel activity of all 4 species"),
    (["owl", "wren", "jay", "tit"], 1, "Diel activity of the top species by detections (owl)"),
    (["owl", "wren", "jay", "tit"], 2, "Diel activity of the top 2 of 4 species by detections"),
    ([], 6, "Diel activity"),
])
def test_diel_heading_reads_naturally(species, top, title):
    assert diel_title(species, top) == title


def test_report_heading_names_the_species_shown(report):
    assert "<h2>Diel activity of owl and wren</h2>" in report.html_path.read_text()


@pytest.mark.parametrize("n_species, n_sites", [(1, 1), (2, 3), (12, 40)])
def test_species_site_title_clears_the_colour_bar(n_species, n_sites):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.text import Text

    daily = pd.DataFrame([{"label": f"species_{i}", "site": f"SITE_{j:02d}", "local_date": "2024-05-01",
                           "detections": (i + j) % 3} for i in range(n_species) for j in range(n_sites)])
    fig = species_site_plot(daily)
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    [title_text] = [t for t in fig.findobj(Text) if t.get_text().startswith("Species x site")]
    title = title_text.get_window_extent(renderer)
    heat, bar = fig.axes
    for artist in (bar, bar.yaxis.label, heat):
        assert not title.overlaps(artist.get_window_extent(renderer)), artist
    plt.close(fig)


def test_empty_store_still_writes_a_page(tmp_path):
    from pam.store.store import Store

    rep = build_report(Store(tmp_path / "empty"), tmp_path / "out")
    assert rep.figures == 0 and rep.html_path.exists() and rep.species_rows == []


def test_artifacts_only_inside_prefect(report):
    assert publish_artifacts(report) is False


def test_no_prefect_run_does_not_import_prefect_for_its_artifacts(report):
    """pam detect --no-prefect: the summary step must not import Prefect (seconds) only to find no run."""
    code = ("import sys; from pam.analysis.report import publish_artifacts; "
            "assert publish_artifacts(None) is False; print('prefect' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "False", out.stderr


def test_species_summary_without_detections():
    import pam.store.schemas as schemas

    tables = {n: schemas.TABLES[n][0].empty_table().to_pandas()
              for n in ("daily_counts", "hourly_counts", "site_days", "precision")}
    assert species_summary(tables).empty


@pytest.mark.prefect
def test_nightly_summary_attaches_artifacts(tmp_path, prefect_harness):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    from pam.ops.pipeline import summarize_stage

    store = build(tmp_path / "store", RECS)

    @flow(name="pam-summary-test")
    def summary_flow() -> str:
        return str(summarize_stage(store, CONF))

    state = summary_flow(return_state=True)
    assert (store.root / "reports" / "report.html").exists()
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["pam-summary", "pam-species-summary"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    kinds = {a.key: a.type for a in found}
    assert kinds == {"pam-summary": "markdown", "pam-species-summary": "table"}
    table = next(a for a in found if a.key == "pam-species-summary")
    assert "owl" in str(table.data)
