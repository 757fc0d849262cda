"""Run configuration: every field validated once with a message naming it; method parameter bounds; fuzzing."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from gradviz.errors import GradvizError, MethodError
from gradviz.methods import registry
from gradviz.runconfig import ConfigError, RunConfig

FIELDS = [f for f in RunConfig.__dataclass_fields__]


@pytest.mark.parametrize("text, field, phrase", [
    ('{"limit": "fifty"}', "limit", "positive whole number"),
    ('{"limit": NaN}', "limit", "positive whole number"),
    ('{"limit": 12.7}', "limit", "positive whole number"),
    ('{"limit": 0}', "limit", "positive whole number"),
    ('{"limit": true}', "limit", "positive whole number"),
    ('{"methods": 5}', "methods", "list of method names"),
    ('{"methods": ["msp", "bogus"]}', "methods", "unknown method 'bogus'"),
    ('{"seed": "x"}', "seed", "whole number"),
    ('{"seed": -1}', "seed", "whole number"),
    ('{"model": 123}', "model", "non-empty string"),
    ('{"params": {"odin": 5}}', "params.odin", "expected an object"),
    ('{"params": {"odin": {"temperature": "abc"}}}', "params.odin", "must be a finite number"),
    ('{"params": {"odin": {"temprature": 2}}}', "params.odin", "unknown parameter"),
    ('{"params": {"odni": {"temperature": 2}}}', "params", "unknown method 'odni'"),
    ('{"params": {"msp": {"temperature": 0}}}', "params.msp", "from 0.001 to 100000"),
    ('{"params": {"energy": {"temperature": 1e-300}}}', "params.energy", "from 0.001 to 100000"),
    ('{"params": []}', "params", "expected an object"),
    ('{"batch_size": 0}', "batch_size", "null or a whole number from 1 to 65,536"),
    ('{"batch_size": -3}', "batch_size", "null or a whole number from 1 to 65,536"),
    ('{"device": "gpu"}', "device", "cpu, cuda"),
    ('{"ood": ["letters", "letters"]}', "ood", "twice"),
    ('{"ood": [1, 2]}', "ood", "list of dataset specs"),
    ('{"ood": ["letterz"]}', "ood", "unknown dataset 'letterz'"),
    ('{"ood": ["upload:3 files"]}', "ood", "uploaded in the dashboard"),
    ('{"id": ""}', "id", "non-empty string"),
    ('{"weights": 7}', "weights", "null or a file path"),
])
def test_each_bad_field_is_named_in_one_line(text, field, phrase):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_json(text)
    message = str(info.value)
    assert "\n" not in message and f"{field}: " in message and phrase in message


@pytest.mark.parametrize("text, phrase", [
    ("42", "got a number"), ("null", "got null"), ('"mnist"', "got a string"), ("[]", "got a list"),
    ('{"bogus": 1}', "unknown field"), ("{", "not valid JSON"), ("[" * 100_000, "cannot be read as JSON"),
])
def test_a_config_that_is_not_an_object_of_known_fields_is_refused(text, phrase):
    with pytest.raises(ConfigError, match=phrase):
        RunConfig.from_json(text)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        RunConfig.from_json('{"limit": "fifty", "seed": "x", "batch_size": 0}')
    assert all(f in str(info.value) for f in ("limit:", "seed:", "batch_size:"))


def test_spellings_are_normalised():
    cfg = RunConfig.from_json('{"ood": "letters", "limit": 12.0, "seed": 3.0, "methods": "msp, energy",'
                              ' "params": {"mahalanobis": {"chunk": 64.0}}}')
    assert cfg.ood == ["letters"]  # one set, not its characters
    assert cfg.limit == 12 and isinstance(cfg.limit, int) and cfg.seed == 3
    assert cfg.method_names() == ["msp", "energy"]
    assert RunConfig.from_json(cfg.to_json()) == cfg


def test_uploads_are_provided_sets_for_the_pages_and_dropped_from_exports():
    cfg = RunConfig(ood=["letters", "upload:2 files"], methods=["msp"])
    with pytest.raises(ConfigError, match="uploaded in the dashboard"):
        cfg.validate()
    cfg.validate(provided={"upload:2 files"})  # the pages hand the uploaded set in
    replay, dropped = cfg.replayable()
    assert replay.ood == ["letters"] and dropped == ["upload:2 files"] and cfg.ood == ["letters", "upload:2 files"]
    RunConfig.from_json(replay.to_json())  # what the download button exports replays


def test_method_parameters_are_checked_against_type_and_declared_bounds():
    msp = registry.get_method("msp")
    assert msp.bounds["temperature"] == registry.TEMPERATURE_BOUNDS
    for bad in (0, 1e-300, 1e9, float("nan"), float("inf"), "abc", True, None):
        with pytest.raises(MethodError, match="msp: parameter 'temperature'"):
            msp.create(temperature=bad)
    assert msp.create(temperature=2).params == {"temperature": 2}
    maha = registry.get_method("mahalanobis")
    assert maha.create(chunk=32.0).params["chunk"] == 32 and isinstance(maha.create(chunk=32.0).params["chunk"], int)
    with pytest.raises(MethodError, match="whole number"):
        maha.create(chunk=2.5)
    with pytest.raises(MethodError, match="must be str"):
        registry.get_method("confounding").create(reading=3)


def test_register_refuses_bounds_that_do_not_fit_the_defaults():
    with pytest.raises(ValueError, match="bounds"):
        registry.register("bad_bounds", title="t", paper="p", year=2000, formula="f", family="output", link="l",
                          intuition="i", bounds={"temperature": (2.0, 3.0)},
                          )(lambda batch, temperature=1.0: batch.logits[:, 0])
    with pytest.raises(ValueError, match="bounds"):
        registry.register("bad_bounds", title="t", paper="p", year=2000, formula="f", family="output", link="l",
                          intuition="i", bounds={"nope": (0, 1)})(lambda batch, temperature=1.0: batch.logits[:, 0])
    assert "bad_bounds" not in registry.REGISTRY


# --------------------------------------------------------------------------- fuzzing

_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_value = st.one_of(_json, st.sampled_from(["mnist", "letters", "msp", "all", "cpu", "folder:/x", "upload:1 file"]),
                   st.lists(st.sampled_from(["letters", "noise-uniform", "msp", "energy", "bogus"]), max_size=3),
                   st.dictionaries(st.sampled_from(["msp", "odin", "bogus"]),
                                   st.dictionaries(st.sampled_from(["temperature", "epsilon", "x"]), _json, max_size=2),
                                   max_size=2))


@hsettings(max_examples=300, deadline=None)
@given(st.one_of(_json, st.dictionaries(st.sampled_from(FIELDS + ["extra"]), _value, max_size=6)))
def test_any_json_gives_a_valid_config_or_one_config_error(data):
    text = json.dumps(data, allow_nan=True)
    try:
        cfg = RunConfig.from_json(text)
    except GradvizError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 2000
        return
    # whatever passed is usable as it is: the types every consumer relies on
    assert isinstance(cfg.ood, list) and all(isinstance(s, str) for s in cfg.ood)
    assert cfg.limit is None or (type(cfg.limit) is int and cfg.limit > 0)
    assert type(cfg.seed) is int and (cfg.batch_size is None or (type(cfg.batch_size) is int and cfg.batch_size >= 1))
    assert all(math.isfinite(v) for p in cfg.params.values() for v in p.values() if isinstance(v, float))
    cfg.method_names()
