import json

import pytest

from imgclass.config import RECIPES, TrainConfig, load_recipe


def test_seed_recipe_is_the_reference():
    c = RECIPES["seed"]
    assert (c.image_size, c.val_split, c.epochs, c.batch_size, c.lr, c.patience) == (
        64,
        0.2,
        10,
        32,
        5e-4,
        3,
    )
    assert (c.augment.hflip, c.augment.rotation, c.augment.zoom) == (True, 0.1, 0.1)


def test_overrides_set_what_is_given_none_too_and_reject_unknown_fields():
    c = TrainConfig().replace(epochs=3, augment={"mixup": 0.2})
    assert c.epochs == 3 and c.lr == 5e-4 and c.augment.mixup == 0.2 and c.augment.hflip
    transfer = RECIPES["transfer"]
    assert transfer.replace(pretrained=None).pretrained is None  # issue 15.8: None clears
    assert transfer.replace(dropout=None).dropout is None
    with pytest.raises(ValueError, match="unknown TrainConfig fields: nope"):
        TrainConfig().replace(nope=1)


def test_the_command_line_passes_only_the_options_given():
    """click gives None for every option left out: those keep the recipe's values."""
    from imgclass.cli import _given

    assert _given({"epochs": None, "lr": 0.1, "mixup": None, "cutmix": 1.0}) == {
        "lr": 0.1,
        "augment": {"cutmix": 1.0},
    }
    assert _given({"epochs": None, "mixup": None}) == {}


@pytest.mark.parametrize(
    "field,value",
    [("val_split", 1.0), ("epochs", 0), ("lr", -1.0), ("batch_size", 0), ("precision", "fp8")],
)
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


@pytest.mark.parametrize(
    "content,message",
    [
        ({"epoch": 2}, r"unknown field 'epoch': did you mean 'epochs'\?"),
        ({"epochs": "ten"}, r'epochs must be an integer, got "ten"'),
        ({"epochs": 1.5}, r"epochs must be an integer, got 1.5"),
        ({"epochs": True}, r"epochs must be an integer, got true"),
        ({"tta_flip": 1}, r"tta_flip must be true or false, got 1"),
        ({"pretrained": 3}, r"pretrained must be a string or null, got 3"),
        (
            {"augment": {"hflp": False}},
            r"unknown field 'augment.hflp': did you mean "
            r"'augment.hflip'\?",
        ),
        ({"augment": {"zoom": "big"}}, r'augment.zoom must be a number, got "big"'),
        ({"augment": [1]}, r"augment must be an object, got \[1\]"),
        ([{"epochs": 2}], r"a recipe must be a JSON object of TrainConfig fields, got list"),
    ],
)
def test_a_recipe_file_of_wrong_fields_or_types_is_refused_naming_the_file(
    tmp_path, content, message
):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=f"^{tmp_path / 'mine.json'}: {message}"):
        load_recipe(str(path))


def test_a_recipe_file_takes_an_integer_for_a_number():
    assert TrainConfig.from_dict({"lr": 1, "dropout": None}).lr == 1


@pytest.mark.parametrize("text", ['{"epochs": 2,}', "\xff\xfe"])
def test_a_recipe_file_that_is_not_json_is_named(tmp_path, text):
    path = tmp_path / "mine.json"
    path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ValueError, match=f"^{path}: not (valid JSON|a JSON file)"):
        load_recipe(str(path))
