import json

import pytest

from imgclass.config import RECIPES, TrainConfig, load_recipe


def test_seed_recipe_is_the_reference():
    c = RECIPES["seed"]
    assert (c.image_size, c.val_split, c.epochs, c.batch_size, c.lr, c.patience) == (
        64, 0.2, 10, 32, 5e-4, 3)
    assert (c.augment.hflip, c.augment.rotation, c.augment.zoom) == (True, 0.1, 0.1)


def test_overrides_ignore_none_and_reject_unknown_fields():
    c = TrainConfig().replace(epochs=3, lr=None)
    assert c.epochs == 3 and c.lr == 5e-4
    with pytest.raises(ValueError, match="unknown TrainConfig fields: nope"):
        TrainConfig().replace(nope=1)


@pytest.mark.parametrize("field,value", [("val_split", 1.0), ("epochs", 0), ("lr", -1.0),
                                         ("batch_size", 0), ("precision", "fp8")])
def test_validate_names_the_bad_value(field, value):
    with pytest.raises(ValueError, match=field.split("_")[0]):
        TrainConfig().replace(**{field: value}).validate()


def test_recipe_file_and_round_trip(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"epochs": 2, "augment": {"hflip": False}}))
    c = load_recipe(str(path))
    assert c.epochs == 2 and c.augment.hflip is False and c.augment.rotation == 0.1
    assert TrainConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown recipe"):
        load_recipe("nope")
