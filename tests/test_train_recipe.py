"""Recipes: strict keys, valid names in messages, defaults merge, folds expansion, shipped files."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from competition.errors import UserError
from competition.train.recipe import (
    DEFAULT_CHANNELS,
    MEMBER_TYPES,
    RECIPES_DIR,
    load_recipe,
    member_from_dict,
    parse_recipe,
)

BASE = {
    "defaults": {"encoder": "mobilenet_v2", "crop_size": 64, "pad": 16, "epochs": 3,
                 "loss": {"soft": "jaccard"}},
    "all": [{"name": "a"}],
}


def parse(doc: dict):
    return parse_recipe(doc, name="t")


@pytest.mark.parametrize("name", ["tiny", "cpu", "cpu-faint", "gpu", "pilots", "demo"])
def test_shipped_recipes_parse_and_validate(name):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert recipe.members, "a shipped recipe has members"
    assert recipe.members[0].type == "all"


def test_recipe_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[[all]]\nname = "x"\nencoder = "resnet18"\ncrop_size = 96\n')
    recipe = load_recipe(path)
    assert recipe.name == "mine"
    assert recipe.members[0].crop_size == 96


def test_unknown_recipe_name_lists_shipped():
    with pytest.raises(UserError, match="tiny"):
        load_recipe("no-such-recipe")


def test_unknown_top_level_key_lists_valid_keys():
    with pytest.raises(UserError, match=r"'colour'.*valid keys: .*defaults"):
        parse({**BASE, "colour": 1})


def test_unknown_member_key_lists_valid_keys():
    with pytest.raises(UserError, match=r"'encodr'.*valid keys: .*encoder"):
        parse({**BASE, "all": [{"name": "a", "encodr": "resnet18"}]})


def test_unknown_defaults_key_is_an_error():
    with pytest.raises(UserError, match="'lrr'"):
        parse({**BASE, "defaults": {"lrr": 1.0}})


def test_unknown_loss_key_lists_valid_keys():
    with pytest.raises(UserError, match=r"'dice'.*valid keys: .*soft_weight"):
        parse({**BASE, "all": [{"name": "a", "loss": {"dice": 1}}]})


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(UserError, match=r"'resnet19'.*valid: .*resnet18.*efficientnet-b0"):
        parse({**BASE, "all": [{"name": "a", "encoder": "resnet19"}]})


def test_unknown_arch_lists_valid_names():
    with pytest.raises(UserError, match=r"'UNet'.*valid: .*Unet"):
        parse({**BASE, "all": [{"name": "a", "arch": "UNet"}]})


@pytest.mark.parametrize("key,value", [("optimizer", "adam"), ("schedule", "step"),
                                       ("augment", "medium"), ("invert", "yes"),
                                       ("on_missing_weights", "skip")])
def test_bad_choice_lists_valid_values(key, value):
    with pytest.raises(UserError, match=rf"'{value}' is not one of"):
        parse({**BASE, "all": [{"name": "a", key: value}]})


def test_wrong_value_type_is_an_error():
    with pytest.raises(UserError, match="expected an integer"):
        parse({**BASE, "all": [{"name": "a", "epochs": "3"}]})


def test_crop_plus_pad_must_be_multiple_of_32():
    with pytest.raises(UserError, match="multiple of 32"):
        parse({**BASE, "all": [{"name": "a", "crop_size": 70}]})


def test_defaults_merge_into_members_and_members_override():
    doc = {**BASE, "all": [{"name": "a"}, {"name": "b", "epochs": 7, "loss": {"bce": 0.5}}]}
    a, b = parse(doc).members
    assert a.encoder == "mobilenet_v2"
    assert a.epochs == 3
    assert b.epochs == 7
    assert b.loss.bce == 0.5
    assert b.loss.soft == "jaccard", "nested [defaults.loss] keys survive a member's loss table"


def test_channel_weights_default_to_one_per_channel():
    m = parse(BASE).members[0]
    assert m.loss.channel_weights == (1.0,) * len(DEFAULT_CHANNELS)


def test_members_need_a_name():
    with pytest.raises(UserError, match="needs a name"):
        parse({**BASE, "all": [{"epochs": 1}]})


def test_duplicate_names_are_an_error():
    with pytest.raises(UserError, match="duplicate"):
        parse({**BASE, "all": [{"name": "a"}, {"name": "a"}]})


def test_parents_come_first():
    doc = {**BASE, "histology": [{"name": "h", "init_from": "all/a"}], "all": [{"name": "a"}]}
    keys = [m.key for m in parse(doc).members]
    assert keys == ["all/a", "histology/h"]


def test_folds_expand_and_init_from_picks_the_same_fold():
    doc = {**BASE, "all": [{"name": "a", "folds": [0, 1]}],
           "brightfield": [{"name": "b", "folds": [0, 1], "init_from": "all/a"}]}
    members = {m.key: m for m in parse(doc).members}
    assert set(members) == {"all/a-f0", "all/a-f1", "brightfield/b-f0", "brightfield/b-f1"}
    assert members["brightfield/b-f1"].fold == 1
    assert members["brightfield/b-f1"].init_from == "all/a-f1"


def test_init_from_another_fold_would_leak():
    doc = {**BASE, "all": [{"name": "a", "fold": 0}],
           "histology": [{"name": "h", "fold": 1, "init_from": "all/a"}]}
    with pytest.raises(UserError, match="leak"):
        parse(doc)


def test_a_recipe_moves_to_another_fold_as_a_whole():
    doc = {**BASE, "histology": [{"name": "h", "init_from": "all/a"}]}
    recipe = parse(doc)
    moved = recipe.on_fold(3)
    assert [m.fold for m in recipe.members] == [0, 0]
    assert [(m.key, m.fold, m.init_from) for m in moved.members] == [("all/a", 3, None), ("histology/h", 3, "all/a")]
    assert moved.name == recipe.name, "the same recipe, validated elsewhere"
    with pytest.raises(UserError, match="fold number"):
        recipe.on_fold(-1)
    with pytest.raises(UserError, match=r"folds \[0, 1\]"):
        parse({**BASE, "all": [{"name": "a", "folds": [0, 1]}]}).on_fold(2)


def test_average_with_init_needs_a_parent_and_a_share_below_one():
    doc = {**BASE, "histology": [{"name": "h", "init_from": "all/a", "average_with_init": 0.5}]}
    assert parse(doc).member("histology/h").average_with_init == 0.5
    for table, problem in (({"name": "h", "average_with_init": 0.5}, "has none"),
                           ({"name": "h", "init_from": "all/a", "average_with_init": 1.0}, r"\[0, 1\)"),
                           ({"name": "h", "init_from": "all/a", "average_with_init": -0.1}, r"\[0, 1\)")):
        with pytest.raises(UserError, match=problem):
            parse({**BASE, "histology": [table]})


def test_init_from_unknown_member_lists_members():
    doc = {**BASE, "histology": [{"name": "h", "init_from": "all/zz"}]}
    with pytest.raises(UserError, match="all/a"):
        parse(doc)


def test_member_lookup_lists_valid_keys():
    with pytest.raises(UserError, match="all/a"):
        parse(BASE).member("all/b")


def test_member_dict_round_trip():
    import json

    m = parse({**BASE, "all": [{"name": "a", "invert": True}]}).members[0]

    back = member_from_dict(json.loads(json.dumps(m.to_dict())))
    assert back == m


def test_decoder_channels_parse_round_trip_and_default_to_smp():
    import json

    doc = {**BASE, "all": [{"name": "a", "decoder_channels": [64, 32, 16, 16, 8]}, {"name": "b"}]}
    a, b = parse(doc).members
    assert a.decoder_channels == (64, 32, 16, 16, 8)
    assert b.decoder_channels == ()
    assert member_from_dict(json.loads(json.dumps(a.to_dict()))) == a


@pytest.mark.parametrize("value, message", [
    ([64, 32, 16, 16], "5 positive widths"),
    ([64, 32, 16, 16, 0], "5 positive widths"),
    ([64, 32, 16, 16, 8.5], "list of integers"),
    ("64", "list of integers"),
])
def test_bad_decoder_channels_are_an_error(value, message):
    with pytest.raises(UserError, match=message):
        parse({**BASE, "all": [{"name": "a", "decoder_channels": value}]})


def test_decoder_channels_need_an_arch_that_takes_them():
    with pytest.raises(UserError, match="FPN has no decoder_channels"):
        parse({**BASE, "all": [{"name": "a", "arch": "FPN", "decoder_channels": [8] * 5}]})


def test_init_from_a_parent_of_another_shape_is_an_error():
    doc = {**BASE, "all": [{"name": "a", "decoder_channels": [64, 32, 16, 16, 8]}],
           "histology": [{"name": "h", "init_from": "all/a"}]}
    with pytest.raises(UserError, match="would not fit"):
        parse(doc)


def test_member_types_match_the_data_package():
    types = pytest.importorskip("competition.data.types")
    assert MEMBER_TYPES[1:] == tuple(types.IMAGE_TYPES)


def test_default_channels_match_targets():
    from competition.targets import CHANNELS

    assert DEFAULT_CHANNELS == tuple(CHANNELS)


def test_shipped_recipes_are_valid_toml_with_description():
    for path in sorted(RECIPES_DIR.glob("*.toml")):
        doc = tomllib.loads(path.read_text())
        assert doc.get("description"), f"{path.name} has a description"


def test_extends_overrides_the_base_defaults_key_by_key_and_keeps_its_members(tmp_path):
    """A recipe that ``extends`` another states only what differs: ``[defaults]`` and
    ``[defaults.loss]`` keys override one by one, member lists not given are the base's, a
    member list given replaces the base's, and the description is the recipe's own."""
    (tmp_path / "base.toml").write_text(
        'description = "base"\n[defaults]\nencoder = "mobilenet_v2"\ncrop_size = 64\npad = 16\n'
        'epochs = 3\n[defaults.loss]\nsoft = "jaccard"\nbce = 1.0\n'
        '[[all]]\nname = "a"\n[[histology]]\nname = "h"\ninit_from = "all/a"\n')
    (tmp_path / "child.toml").write_text(
        'extends = "base.toml"\ndescription = "child"\n[defaults]\ncrop_size = 96\n'
        '[defaults.loss]\nbce = 0.5\n')
    child = load_recipe(tmp_path / "child.toml")
    base = load_recipe(tmp_path / "base.toml")
    assert child.name == "child" and child.description == "child"
    assert [m.key for m in child.members] == [m.key for m in base.members] == ["all/a", "histology/h"]
    for m, b in zip(child.members, base.members):
        assert (m.crop_size, b.crop_size) == (96, 64)
        assert (m.loss.bce, m.loss.soft) == (0.5, "jaccard")
        assert m.epochs == b.epochs == 3
    (tmp_path / "other.toml").write_text(
        'extends = "base.toml"\ndescription = "other"\n[[histology]]\nname = "h2"\ninit_from = "all/a"\n')
    assert [m.key for m in load_recipe(tmp_path / "other.toml").members] == ["all/a", "histology/h2"]


def test_extends_refuses_a_cycle_and_names_a_missing_base(tmp_path):
    (tmp_path / "a.toml").write_text('extends = "b.toml"\ndescription = "a"\n')
    (tmp_path / "b.toml").write_text('extends = "a.toml"\ndescription = "b"\n')
    with pytest.raises(UserError, match="cycle"):
        load_recipe(tmp_path / "a.toml")
    (tmp_path / "c.toml").write_text('extends = "no-such-recipe"\ndescription = "c"\n')
    with pytest.raises(UserError, match="no-such-recipe"):
        load_recipe(tmp_path / "c.toml")


def test_cpu_faint_is_the_cpu_recipe_but_for_its_augmentation():
    cpu, faint = load_recipe("cpu"), load_recipe("cpu-faint")
    assert [m.key for m in faint.members] == [m.key for m in cpu.members]
    for a, b in zip(cpu.members, faint.members):
        assert (a.augment, b.augment) == ("tissue", "tissue-faint")
        assert dataclasses.replace(b, augment=a.augment) == a
