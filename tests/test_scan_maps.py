"""The maps a scan stores beside the first Eigen-CAM component: the second component and the class
maps of the predicted and the given class, in the photo's frame; and `--all-boxes`, a box for each
of two objects far apart. The real embedded model on real photos, a real database."""

from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE_DATA
from PIL import Image
from synthetic_images import espresso_cup, make_dataset, noise_canvas, paste

from audit import names
from audit.scan.options import ScanOptions
from audit.scan.run import scan

PHOTOS = {"chelsea.jpg": "tiger cat", "rocket.jpg": "missile",  # predicted as labelled
          "coffee.jpg": "tripod", "camera.jpg": "espresso"}  # labelled wrong on purpose
INLINE_MAPS = (names.EIGENCAM_PC2, names.GRADCAM_PRED, names.GRADCAM_GIVEN)


@pytest.fixture(scope="module")
def scanned_photos(embedded_model, tmp_path_factory):
    """The photos of PHOTOS scanned with the default options: name -> sample."""
    dataset = make_dataset("maps", [(SAMPLE_DATA / name, label) for name, label in PHOTOS.items()],
                           tmp_path_factory.mktemp("maps"))
    assert scan(dataset, embedded_model, options=ScanOptions(workers=0)).scanned == len(PHOTOS)
    return {Path(sample.filepath).name: sample for sample in dataset}


def test_the_second_component_and_the_class_maps_are_stored_in_the_photos_frame(scanned_photos):
    for name, sample in scanned_photos.items():
        width, height = Image.open(SAMPLE_DATA / name).size
        for field in INLINE_MAPS:
            heatmap = sample[field].map
            assert heatmap.dtype == np.uint8 and heatmap.ndim == 2, (name, field)
            assert abs(heatmap.shape[1] / heatmap.shape[0] - width / height) < 0.05, (name, field)
            assert heatmap.max() == 255, (name, field)


def test_the_class_maps_differ_where_the_label_is_wrong_and_agree_where_it_is_right(scanned_photos):
    for name, sample in scanned_photos.items():
        signals = sample[names.SIGNALS]
        predicted, given = sample[names.GRADCAM_PRED].map, sample[names.GRADCAM_GIVEN].map
        if name in ("coffee.jpg", "camera.jpg"):
            assert signals["pred_index"] != signals["given_index"], name
            mean_difference = np.abs(predicted.astype(float) - given.astype(float)).mean()
            assert mean_difference > 15, (name, mean_difference)  # of 255
        else:
            assert signals["pred_index"] == signals["given_index"], name
            np.testing.assert_array_equal(predicted, given)
        # Shares of each class map's mass inside the Eigen-CAM box; the predicted class's evidence
        # lies mostly on the dominant object.
        shares = signals["class_map_on_object"]
        assert set(shares) == {"pred", "given"} and all(0.0 <= share <= 1.0 for share in shares.values()), name
        assert shares["pred"] > 0.5, name


# --- --all-boxes -------------------------------------------------------------------------------------


def covered_share(box, target) -> float:
    """Share of ``target``'s area inside ``box`` (both x1, y1, x2, y2)."""
    across = max(0.0, min(box[2], target[2]) - max(box[0], target[0]))
    down = max(0.0, min(box[3], target[3]) - max(box[1], target[1]))
    return across * down / ((target[2] - target[0]) * (target[3] - target[1]))


def test_all_boxes_gives_a_box_for_each_of_two_objects_far_apart(embedded_model, tmp_path, one_torch_thread):
    side = 448  # square: the centre crop keeps 7/8 of it, both cups included
    canvas = noise_canvas(side, side)
    cup = espresso_cup()
    top_left = paste(canvas, cup, 40, 40, 130)
    bottom_right = paste(canvas, cup, 278, 278, 130)
    path = tmp_path / "two-cups.jpg"
    Image.fromarray(canvas).save(path, quality=92)
    dataset = make_dataset("two-cups", [(path, "espresso")], tmp_path)

    scan(dataset, embedded_model, options=ScanOptions(workers=0))
    assert len(dataset.first()[names.EIGENCAM_BOX].detections) == 1

    assert scan(dataset, embedded_model, options=ScanOptions(workers=0, all_boxes=True)).scanned == 1  # other settings: redone
    boxes = []
    for detection in dataset.first()[names.EIGENCAM_BOX].detections:
        x, y, w, h = detection.bounding_box
        boxes.append((x * side, y * side, (x + w) * side, (y + h) * side))
    assert len(boxes) >= 2
    for cup_box, other in ((top_left, bottom_right), (bottom_right, top_left)):
        assert any(covered_share(box, cup_box) > 0.9 and covered_share(box, other) < 0.1 for box in boxes), boxes
