"""``neuroread results``: a folder of encoded result objects summarised per study, with a line per
table of the text report (e.g. microbleeds per location) and per SEG (its segments)."""
from __future__ import annotations

import dataclasses
from collections import Counter

import pydicom
import pytest

from neuroread.models import UCUM_COUNT, UCUM_MM3, Code, Column, Table, TableRow
from neuroread.node.encode import EncodeInfo, encode_result
from neuroread.node.tools.results_summary import render, summarize
from support.tiny_model import SPEC

INFO = EncodeInfo(manufacturer="neuroread", device_name="neuroread test node", software_version="0.1.0")
PRIVATE = "99NEUROREAD"
# shaped as cmb-svd's counts: one count column, a row per location class with its explanation, then all
LOCATIONS = (Code("CMBLOBAR", PRIVATE, "Lobar (cortex and juxtacortical white matter)"),
             Code("CMBDEEP", PRIVATE, "Deep (basal ganglia, thalamus, capsules)"),
             Code("CMBINFRA", PRIVATE, "Infratentorial (brainstem, cerebellum)"),
             Code("CMBALL", PRIVATE, "All locations"))
COUNTS = Table("microbleed counts", Code("CMBCOUNT", PRIVATE, "Number of cerebral microbleeds"),
               (Column("count", Code("CMBN", PRIVATE, "Microbleeds"), UCUM_COUNT),),
               tuple(TableRow(c, (float(n),)) for c, n in zip(LOCATIONS, (3, 7, 2, 12))))
VOLUMES = Table("volume per region", Code("VOLREGION", PRIVATE, "Volume per region"),
                (Column("volume", Code("VOL", PRIVATE, "volume"), UCUM_MM3),
                 Column("lesions", Code("N", PRIVATE, "lesions"), UCUM_COUNT)),
                (TableRow(Code("F", "99NMM", "frontal"), (12.5, 2)), TableRow(Code("O", "99NMM", "occipital"), (0.25, 1))))


@pytest.fixture(scope="module")
def pacs(ct_case, tmp_path_factory):
    """The tiny model's result (two lesions, the two tables) encoded and written as a PACS folder."""
    vol, sources, result = ct_case
    result = dataclasses.replace(result, tables=(COUNTS, VOLUMES))
    result.check(SPEC, {"ct": vol})
    objects = encode_result(result, SPEC, {"ct": sources}, node_info=INFO)
    folder = tmp_path_factory.mktemp("pacs")
    for ds in objects:
        ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return folder, result, sources


def test_the_summary_reads_each_table_and_each_seg(pacs):
    folder, result, _ = pacs
    (study,) = summarize(folder)
    assert study.kinds["SEG"] == 1 and study.kinds["report"] == 1
    tables = {t.meaning: t for _, t in study.tables}
    assert set(tables) == {"Number of cerebral microbleeds", "Volume per region"}
    counts = tables["Number of cerebral microbleeds"]
    assert [(r.meaning, r.values) for r in counts.rows] == [
        (c.meaning, (("Microbleeds", float(n), "{count}"),)) for c, n in zip(LOCATIONS, (3, 7, 2, 12))]
    assert [r.values for r in tables["Volume per region"].rows] == [
        (("volume", 12.5, "mm3"), ("lesions", 2.0, "{count}")), (("volume", 0.25, "mm3"), ("lesions", 1.0, "{count}"))]
    (model, seg), = study.segmentations
    assert model == SPEC.name and seg.segments == len(result.lesions) == 2
    assert sum(n for _, n in seg.types) == 2
    assert {t for t, _ in seg.types} == {les.code.meaning for les in result.lesions}
    assert all(f.meaning != "Number of cerebral microbleeds" for _, f in study.findings)  # a table is no finding


def test_render_prints_a_line_per_table_and_per_seg_and_no_patient_name(pacs):
    folder, result, sources = pacs
    text = render(summarize(folder), folder)
    lines = text.splitlines()
    assert "  Number of cerebral microbleeds: Lobar 3, Deep 7, Infratentorial 2, All locations 12" in lines
    assert "  Volume per region: frontal volume 12.5 mm3, lesions 2; occipital volume 0.25 mm3, lesions 1" in lines
    types = Counter(les.code.meaning for les in result.lesions)  # in segment order
    seg_line = [ln for ln in lines if ln.startswith("  SEG:")]
    assert seg_line == [f"  SEG: 2 segments ({next(iter(types))})" if len(types) == 1 else
                        f"  SEG: 2 segments ({', '.join(f'{n} {t}' for t, n in types.items())})"]
    assert lines.index(seg_line[0]) < len(lines) - 1 and lines[-1].startswith("  files:")
    name = str(sources[0].get("PatientName", ""))
    assert not name or name not in text
    assert pydicom.dcmread(next(folder.glob("*.dcm"))).PatientName == sources[0].PatientName  # names were there
