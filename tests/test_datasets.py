"""Dataset presets: sizes, palettes and lookups the exporter, runtime and evaluator rely on."""
import pytest

from lrformer_deploy.data.datasets import DATASET_NAMES, dataset_for_num_classes, get_dataset
from lrformer_deploy.errors import UserError

EXPECTED = {"ade20k": 150, "coco-stuff": 171, "cityscapes": 19}


@pytest.mark.parametrize("name,count", sorted(EXPECTED.items()))
def test_official_datasets_have_mmseg_class_counts(name, count):
    preset = get_dataset(name)
    assert preset.num_classes == count
    assert len(preset.class_names) == count
    assert len(preset.palette) == count


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_palettes_are_rgb_bytes_and_names_unique(name):
    preset = get_dataset(name)
    assert len(preset.palette) == preset.num_classes
    for colour in preset.palette:
        assert len(colour) == 3
        assert all(isinstance(v, int) and 0 <= v <= 255 for v in colour)
    # Names must be unique (and stripped): they label table rows and legend entries.
    assert len(set(preset.class_names)) == preset.num_classes
    assert all(n == n.strip() and n for n in preset.class_names)
    assert preset.ignore_index == 255
    assert preset.mean == (123.675, 116.28, 103.53)
    assert preset.std == (58.395, 57.12, 57.375)


def test_known_entries_match_mmseg():
    ade = get_dataset("ade20k")
    assert ade.class_names[:3] == ("wall", "building", "sky")
    assert ade.class_names[7] == "bed"
    assert ade.class_names[-1] == "flag"
    assert ade.palette[0] == (120, 120, 120) and ade.palette[-1] == (92, 0, 255)
    city = get_dataset("cityscapes")
    assert city.class_names[0] == "road" and city.class_names[-1] == "bicycle"
    assert city.palette[13] == (0, 0, 142)  # car
    coco = get_dataset("coco-stuff")
    assert coco.class_names[0] == "person" and coco.class_names[-1] == "wood"
    assert coco.palette[-1] == (64, 64, 0)


def test_reduce_zero_label_only_for_ade20k():
    assert get_dataset("ade20k").reduce_zero_label is True
    for name in ("coco-stuff", "cityscapes", "synthetic"):
        assert get_dataset(name).reduce_zero_label is False


def test_lookup_by_class_count_and_aliases():
    assert dataset_for_num_classes(150).name == "ade20k"
    assert dataset_for_num_classes(171).name == "coco-stuff"
    assert dataset_for_num_classes(19).name == "cityscapes"
    assert dataset_for_num_classes(get_dataset("synthetic").num_classes).name == "synthetic"
    assert dataset_for_num_classes(7777) is None
    assert get_dataset("COCO-Stuff-164k").name == "coco-stuff"
    assert get_dataset("ADE20K").name == "ade20k"


def test_unknown_dataset_is_a_user_error():
    with pytest.raises(UserError, match="unknown dataset"):
        get_dataset("pascal-voc")
def test_synthetic_preset_matches_generator_classes():
    from lrformer_deploy.data import synthetic

    preset = get_dataset("synthetic")
    assert preset.class_names == synthetic.CLASS_NAMES
    assert preset.num_classes == len(synthetic.CLASS_NAMES)


