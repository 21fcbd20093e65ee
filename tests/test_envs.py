"""VLLM_LOG_MOE* parsing and checking (moe_route_log/envs.py)."""

import os

import pytest

from moe_route_log import envs
from moe_route_log.envs import LogConfigError, parse_layers, read_config


def config(tmp_path, **extra):
    return read_config({"VLLM_LOG_MOE": str(tmp_path / "log.jsonl"), **extra})


def test_unset_or_empty_means_off(tmp_path):
    assert read_config({}) is None
    assert read_config({"VLLM_LOG_MOE": "", "VLLM_LOG_MOE_LAYER": "junk"}) is None


def test_defaults(tmp_path):
    c = config(tmp_path)
    assert c.path == str(tmp_path / "log.jsonl")
    assert c.layers is None and c.layer_spec == ""  # unset: the first MoE layer
    assert c.seed is None and c.model_id is None and c.run_label is None
    assert c.buffer_bytes == 256 * 2**20
    assert (c.mode, c.interval_s, c.start_on) == ("routes", 10.0, True)
    assert (c.max_bytes, c.keep, c.sample) == (None, None, 1.0)
    assert c.counts_in_graph is False
    assert c.dump_keep == 16


def test_all_values(tmp_path):
    c = config(
        tmp_path,
        VLLM_LOG_MOE_LAYER="23, 0,5,5",
        VLLM_LOG_MOE_SEED="-7",
        VLLM_LOG_MOE_MODEL_ID="org/model",
        VLLM_LOG_MOE_REQ_ID="run 1",
        VLLM_LOG_MOE_BUFFER_MB="3",
    )
    assert c.layers == (0, 5, 23)
    assert (c.seed, c.model_id, c.run_label, c.buffer_bytes) == (-7, "org/model", "run 1", 3 << 20)


@pytest.mark.parametrize("value", ["all", "ALL", " all "])
def test_layers_all(value):
    assert parse_layers(value) is None


@pytest.mark.parametrize("value", ["", "a", "1,,2", "-1", "1.5", "0;1", "all,1"])
def test_bad_layers_name_variable_value_and_forms(value):
    with pytest.raises(LogConfigError) as e:
        parse_layers(value)
    assert f"VLLM_LOG_MOE_LAYER={value!r} is not valid" in str(e.value)
    assert "0,5,23" in str(e.value) and "'all'" in str(e.value)


def test_layer_out_of_range_names_layer_count(tmp_path):
    c = config(tmp_path, VLLM_LOG_MOE_LAYER="3,24")
    assert c.resolve_layers(25) == (3, 24)
    with pytest.raises(
        LogConfigError, match=r"'3,24': layer 24 is out of range: the model has 24 layers \(0..23\)"
    ):
        c.resolve_layers(24)
    assert config(tmp_path, VLLM_LOG_MOE_LAYER="all").resolve_layers(4) == (0, 1, 2, 3)


DEEPSEEK_V2_LITE_MOE = list(range(1, 27))  # first_k_dense_replace 1, 27 layers


@pytest.mark.parametrize(
    ("spec", "moe_layers", "layers", "choice"),
    [
        (None, DEEPSEEK_V2_LITE_MOE, (1,), envs.FIRST_MOE_LAYER_CHOICE),
        (None, list(range(24)), (0,), envs.FIRST_MOE_LAYER_CHOICE),  # Qwen1.5-MoE: as before
        (None, [3, 1, 5], (1,), envs.FIRST_MOE_LAYER_CHOICE),
        ("all", [1, 3, 5, 7], (1, 3, 5, 7), "VLLM_LOG_MOE_LAYER='all'"),  # Llama 4: interleaved
        ("7,3", [1, 3, 5, 7], (3, 7), "VLLM_LOG_MOE_LAYER='7,3'"),
    ],
)
def test_layer_choice(tmp_path, spec, moe_layers, layers, choice):
    c = config(tmp_path, **({} if spec is None else {"VLLM_LOG_MOE_LAYER": spec}))
    assert c.choose_layers(27, moe_layers) == (layers, choice)


def test_an_explicit_dense_layer_is_refused_with_the_moe_layers(tmp_path):
    with pytest.raises(LogConfigError) as e:
        config(tmp_path, VLLM_LOG_MOE_LAYER="0").choose_layers(27, DEEPSEEK_V2_LITE_MOE)
    assert str(e.value) == (
        "VLLM_LOG_MOE_LAYER='0': layer 0 is not an MoE layer of this model; its MoE layers are 1-26"
    )
    with pytest.raises(LogConfigError, match=r"'1,2': layer 2 is not an MoE layer.* are 1,3,5,7"):
        config(tmp_path, VLLM_LOG_MOE_LAYER="1,2").choose_layers(8, [1, 3, 5, 7])
    with pytest.raises(LogConfigError, match="layer 9 is out of range: the model has 8 layers"):
        config(tmp_path, VLLM_LOG_MOE_LAYER="9").choose_layers(8, [1, 3, 5, 7])
    with pytest.raises(LogConfigError, match="this model has no FusedMoE layer"):
        config(tmp_path).choose_layers(8, [])


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("VLLM_LOG_MOE_SEED", "x", "an integer"),
        ("VLLM_LOG_MOE_SEED", "1.0", "an integer"),
        ("VLLM_LOG_MOE_BUFFER_MB", "0", "an integer >= 1"),
        ("VLLM_LOG_MOE_BUFFER_MB", "lots", "an integer"),
    ],
)
def test_bad_integers(tmp_path, name, value, accepted):
    with pytest.raises(
        LogConfigError, match=f"{name}={value!r} is not valid; accepted: {accepted}"
    ):
        config(tmp_path, **{name: value})


def test_production_settings(tmp_path):
    c = config(
        tmp_path,
        VLLM_LOG_MOE_MODE="Counts",
        VLLM_LOG_MOE_INTERVAL_S="0.25",
        VLLM_LOG_MOE_START="off",
        VLLM_LOG_MOE_MAX_MB="64",
        VLLM_LOG_MOE_KEEP="3",
        VLLM_LOG_MOE_SAMPLE="0.01",
    )
    assert (c.mode, c.interval_s, c.start_on) == ("counts", 0.25, False)
    assert (c.max_bytes, c.keep, c.sample) == (64 << 20, 3, 0.01)
    assert config(tmp_path, VLLM_LOG_MOE_SAMPLE="1").sample == 1.0
    assert config(tmp_path, VLLM_LOG_MOE_ENCODERS="3").encoders == 3
    assert config(tmp_path, VLLM_LOG_MOE_COUNTS_IN_GRAPH="1").counts_in_graph is True
    assert config(tmp_path, VLLM_LOG_MOE_COUNTS_IN_GRAPH="0").counts_in_graph is False
    assert config(tmp_path).encoders == max(1, min(4, (os.cpu_count() or 1) // 8))  # auto
    assert config(tmp_path, VLLM_LOG_MOE_DUMP_KEEP="0").dump_keep == 0  # no dump files
    assert config(tmp_path, VLLM_LOG_MOE_DUMP_KEEP="3").dump_keep == 3


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("VLLM_LOG_MOE_MODE", "tokens", "'routes' or 'counts'"),
        ("VLLM_LOG_MOE_START", "yes", "'on' or 'off'"),
        ("VLLM_LOG_MOE_INTERVAL_S", "0", "a number > 0"),
        ("VLLM_LOG_MOE_INTERVAL_S", "-3", "a number > 0"),
        ("VLLM_LOG_MOE_INTERVAL_S", "inf", "a number > 0"),
        ("VLLM_LOG_MOE_INTERVAL_S", "soon", "a number > 0"),
        ("VLLM_LOG_MOE_SAMPLE", "0", "a number > 0 and <= 1"),
        ("VLLM_LOG_MOE_SAMPLE", "1.5", "a number > 0 and <= 1"),
        ("VLLM_LOG_MOE_SAMPLE", "nan", "a number > 0 and <= 1"),
        ("VLLM_LOG_MOE_SAMPLE", "1%", "a number > 0 and <= 1"),
        ("VLLM_LOG_MOE_MAX_MB", "0", "an integer >= 1"),
        ("VLLM_LOG_MOE_MAX_MB", "1.5", "an integer"),
        ("VLLM_LOG_MOE_ENCODERS", "0", "'auto' or an integer from 1 to 64"),
        ("VLLM_LOG_MOE_ENCODERS", "many", "'auto' or an integer from 1 to 64"),
        ("VLLM_LOG_MOE_COUNTS_IN_GRAPH", "yes", "'0' or '1'"),
        ("VLLM_LOG_MOE_COUNTS_IN_GRAPH", "2", "'0' or '1'"),
        ("VLLM_LOG_MOE_DUMP_KEEP", "-1", "an integer >= 0"),
        ("VLLM_LOG_MOE_DUMP_KEEP", "all", "an integer"),
        ("VLLM_LOG_MOE_DUMP_KEEP", "2.5", "an integer"),
    ],
)
def test_bad_production_settings(tmp_path, name, value, accepted):
    with pytest.raises(LogConfigError) as e:
        config(tmp_path, **{name: value})
    assert str(e.value) == f"{name}={value!r} is not valid; accepted: {accepted}"


def test_keep_needs_rotation(tmp_path):
    with pytest.raises(LogConfigError, match="VLLM_LOG_MOE_KEEP='2' needs VLLM_LOG_MOE_MAX_MB"):
        config(tmp_path, VLLM_LOG_MOE_KEEP="2")
    with pytest.raises(LogConfigError, match=r"VLLM_LOG_MOE_KEEP='0' is not valid; .* >= 1"):
        config(tmp_path, VLLM_LOG_MOE_MAX_MB="1", VLLM_LOG_MOE_KEEP="0")


def test_log_path_checks(tmp_path):
    missing = tmp_path / "nope" / "log.jsonl"
    with pytest.raises(LogConfigError, match=f"directory '{tmp_path / 'nope'}' does not exist"):
        read_config({"VLLM_LOG_MOE": str(missing)})
    with pytest.raises(LogConfigError, match="is a directory; give a file path"):
        read_config({"VLLM_LOG_MOE": str(tmp_path)})
    # /proc refuses new files even to root: a real "not writable" case
    with pytest.raises(LogConfigError, match=r"VLLM_LOG_MOE='/proc/moe.jsonl' is not writable"):
        read_config({"VLLM_LOG_MOE": "/proc/moe.jsonl"})
    assert not list(tmp_path.glob(".vllm_log_moe_probe*")), "the write probe is cleaned up"


def test_existing_file_and_fifo_are_accepted_untouched(tmp_path):
    existing = tmp_path / "old.jsonl"
    existing.write_text("keep me until the writer starts\n")
    assert read_config({"VLLM_LOG_MOE": str(existing)}).path == str(existing)
    assert existing.read_text() == "keep me until the writer starts\n"
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    assert read_config({"VLLM_LOG_MOE": str(fifo)}).path == str(fifo)  # must not block


def test_relative_and_home_paths_are_made_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert read_config({"VLLM_LOG_MOE": "rel.jsonl"}).path == str(tmp_path / "rel.jsonl")


def test_every_variable_is_documented():
    assert set(envs.ENV_VARS) == {
        "VLLM_LOG_MOE",
        "VLLM_LOG_MOE_LAYER",
        "VLLM_LOG_MOE_SEED",
        "VLLM_LOG_MOE_MODEL_ID",
        "VLLM_LOG_MOE_REQ_ID",
        "VLLM_LOG_MOE_BUFFER_MB",
        "VLLM_LOG_MOE_MODE",
        "VLLM_LOG_MOE_INTERVAL_S",
        "VLLM_LOG_MOE_START",
        "VLLM_LOG_MOE_MAX_MB",
        "VLLM_LOG_MOE_KEEP",
        "VLLM_LOG_MOE_DUMP_KEEP",
        "VLLM_LOG_MOE_SAMPLE",
        "VLLM_LOG_MOE_ENCODERS",
        "VLLM_LOG_MOE_COUNTS_IN_GRAPH",
    }
    assert all(len(doc) > 30 for _, doc in envs.ENV_VARS.values())
