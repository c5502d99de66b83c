"""The library's front door (`import audit`), used as the package docstring and the README show it."""

import csv

import audit


def test_every_name_of_the_front_door_resolves():
    for name in audit.__all__:
        assert getattr(audit, name) is not None, name


def test_the_notebook_example_runs_end_to_end(tmp_path):
    dataset, added = audit.load_source(audit.SourceRequest("sample", name="api-sample"))
    assert added == len(dataset) > 10
    result = audit.audit_dataset(dataset, audit.load_models(audit.model_names()), options=audit.ScanOptions(workers=0))
    assert result.scan.scanned == len(dataset) and result.scoring.counts
    rows = audit.ranked_rows(dataset, top=3)
    assert {row["filepath"].rsplit("/", 1)[1] for row in rows} == {"camera.jpg", "coffee.jpg",
                                                                    "astronaut_shuttle_model.jpg"}
    exported = audit.export_dataset(dataset, tmp_path / "relabel.csv")
    listed = list(csv.DictReader(open(tmp_path / "relabel.csv")))
    assert exported.count == len(listed) and listed[0]["new_label"] == ""
    listed[0]["new_label"] = listed[0]["predicted_label"]
    with open(tmp_path / "relabel.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(listed[0]))
        writer.writeheader()
        writer.writerows(listed)
    assert len(audit.relabel_from_file(dataset, tmp_path / "relabel.csv").changed) == 1
