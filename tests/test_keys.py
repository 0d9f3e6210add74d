"""The key schema: every key is built and parsed in tsdyn.keys, and the two agree."""
import pytest

from tsdyn import keys


@pytest.mark.parametrize("section, layer, name, group, text", [
    ("match", 0, "mean_best", None, "match/layer0/mean_best"),
    ("bn", 12, "frac_nonpositive", "student", "bn/student/layer12/frac_nonpositive"),
    ("luck", 3, "top_pct_mean/epoch1", None, "luck/layer3/top_pct_mean/epoch1"),
])
def test_layer_key_round_trip(section, layer, name, group, text):
    assert keys.layer_key(section, layer, name, group) == text
    assert keys.parse_layer_key(text) == keys.LayerKey(section, layer, name, group)
    assert str(keys.parse_layer_key(text)) == text


@pytest.mark.parametrize("text", ["loss/eval", "prune/fanout/loss_after", "match/layerX/mean_best", "layer0/x"])
def test_keys_without_a_layer_do_not_parse(text):
    assert keys.parse_layer_key(text) is None


def test_member_suffixes_are_stripped_and_only_they():
    key = "match/layer0/mean_best"
    assert keys.member_key(key, 3) == key + "/s3" and keys.stat_key(key, "min") == key + "/min"
    for suffixed in (keys.member_key(key, 11), keys.stat_key(key, "min"), keys.stat_key(key, "max")):
        assert keys.base_key(suffixed) == key
    assert keys.base_key("loss/train") == "loss/train"
    assert keys.base_key("bn/student/layer0/frac_nonpositive") == "bn/student/layer0/frac_nonpositive"


def test_layers_and_names_found_among_keys():
    found = ["match/layer0/mean_best", "match/layer2/mean_best", "match/layer1/mean_best/s0",
             "fanout/layer5/mean_best", "match/layer10/mean_best",
             "match/layer0/frac_above_0.95", "match/layer0/frac_above_0.9", "match/layer1/frac_above_0.5",
             "luck/layer0/top_pct_mean/epoch3", "luck/layer1/top_pct_mean/epoch0", "luck/layer0/top_pct_median/epoch7"]
    assert keys.layers(found, "match", "mean_best") == [0, 2, 10]   # layer 1 only per student; fanout is another section
    assert keys.frac_above_thresholds(found) == [0.9, 0.95]
    assert keys.luck_baselines(found) == [0, 3]
    assert keys.frac_above(0.9) == "frac_above_0.9" and keys.matchcnt(0.95) == "matchcnt_0.95"
    assert keys.luck_rank("median", 2) == "top_pct_median/epoch2"


def test_array_names_and_numeric_sort():
    names = ["corr_layer0", "corr_layer10", "best_corr_layer1", "corr_layer2", "corr"]
    assert keys.array_key("corr", 2) == "corr_layer2"
    assert keys.array_layers(names, "corr") == [0, 2, 10] and keys.array_layers(names, "best_corr") == [1]
    assert sorted(["a/layer10/x", "a/layer2/x", "a/layer1/x"], key=keys.sort_key) == \
        ["a/layer1/x", "a/layer2/x", "a/layer10/x"]
