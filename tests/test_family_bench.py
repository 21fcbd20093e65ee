"""bench/family_bench.py's CPU-checkable parts: configs and plan, the rule check, the table,
one failing family not stopping the others, and one engine end to end on the CPU build."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from moe_profiler.reading import routes
from moe_profiler.verification import family_check, routing_rules

sys.path.insert(0, str(REPO / "bench"))
import family_bench
from e2e_helpers import engine_pythonpath

# MoE layers of each planned run: the dense first layers, Llama 4's interleaving
PLANNED_MOE_LAYERS = {
    "deepseek_v3": [3],
    "kimi_k2": [1],
    "glm4_moe": [3],
    "llama4": [1],
    "mixtral": [0, 1, 2, 3],
    "qwen3_moe": list(range(8)),
    "olmoe": list(range(16)),
    "deepseek_v2_lite": list(range(1, 8)),
    "qwen2_moe": list(range(24)),
    "gpt_oss": list(range(24)),
}


@pytest.mark.parametrize("family", list(family_bench.PLAN))
def test_each_planned_config_loads_and_changes_only_its_layer_count(family, tmp_path):
    from transformers import AutoConfig

    run = family_bench.PLAN[family]
    original = json.loads((family_bench.CONFIGS / run.config).read_text())
    config = family_bench.model_config(run)
    changed = {k for k in original if original[k] != config[k]}
    assert changed <= {"num_hidden_layers", "layer_types"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.num_hidden_layers == (run.layers or original["num_hidden_layers"])
    assert family_bench.moe_layers(config) == PLANNED_MOE_LAYERS[family]
    routing_rules.rule_for(config)  # every family has its rule


def test_moe_layers_of_the_full_configs():
    full = {
        f: json.loads((family_bench.CONFIGS / r.config).read_text())
        for f, r in family_bench.PLAN.items()
    }
    assert family_bench.moe_layers(full["deepseek_v3"]) == list(range(3, 61))
    assert family_bench.moe_layers(full["llama4"]) == list(range(1, 48, 2))  # every other layer
    assert family_bench.moe_layers(full["kimi_k2"]) == list(range(1, 61))
    assert family_bench.moe_layers(full["glm4_moe"]) == list(range(3, 92))


def test_rules_read_off_the_real_configs():
    rule = {
        f: routing_rules.rule_for(family_bench.model_config(r))
        for f, r in family_bench.PLAN.items()
    }
    assert rule["deepseek_v3"] == routing_rules.Rule(
        "sigmoid", 8, True, num_groups=8, topk_groups=4, correction_bias=True, scale=2.5
    )
    assert rule["kimi_k2"] == routing_rules.Rule(
        "sigmoid", 8, True, correction_bias=True, scale=2.827
    )
    assert rule["glm4_moe"] == routing_rules.Rule(
        "sigmoid", 8, True, correction_bias=True, scale=2.5
    )
    assert rule["deepseek_v2_lite"] == routing_rules.Rule("softmax", 6, False)
    assert rule["gpt_oss"] == routing_rules.Rule("softmax", 4, True, choose_on_logits=True)
    assert rule["llama4"] == routing_rules.Rule("sigmoid", 1, False, choose_on_logits=True)
    assert rule["mixtral"] == routing_rules.Rule("softmax", 2, True)
    assert rule["qwen3_moe"] == routing_rules.Rule("softmax", 8, True)
    assert rule["olmoe"] == routing_rules.Rule("softmax", 8, False)


def test_waves_keep_plan_order():
    assert family_bench.waves(["mixtral", "deepseek_v3", "olmoe", "llama4"]) == [
        ["deepseek_v3", "llama4"],
        ["mixtral", "olmoe"],
    ]


def route(req_id: str, pos: int, layer: int, experts, weights) -> routes.Route:
    return routes.Route(1, pos, layer, list(experts), list(weights), req_id, pos)


def test_rule_agreement_counts_each_case():
    """Top-2 of 4 softmax experts, renormalised: equal, wrong, tied, missing, unknown lines."""
    rule = routing_rules.Rule("softmax", 2, True)
    logits = np.array(
        [
            [4.0, 3.0, 0.0, 0.0],  # r-1 pos 0: experts 0, 1
            [0.0, 1.0, 2.0, 3.0],  # r-1 pos 1: 3, 2; logged wrong
            [2.0, 1.0, 1.0, 0.0],  # r-1 pos 2: 0 and a tie between 1 and 2
            [0.0, 0.0, 5.0, 4.0],  # r-2 pos 0: no route line
        ],
        dtype=np.float32,
    )
    steps = [
        family_check.TapStep(["r-1", "r-2"], np.array([3, 1]), np.array([0, 1, 2, 0]), {7: logits})
    ]
    tapped = family_check.tapped_logits(steps)
    assert set(tapped) == {("r-1", 0, 7), ("r-1", 1, 7), ("r-1", 2, 7), ("r-2", 0, 7)}
    w0 = np.exp([4.0, 3.0]) / np.exp([4.0, 3.0]).sum()
    logged = [
        route("r-1", 0, 7, [1, 0], [w0[1], w0[0] + 1e-5]),
        route("r-1", 1, 7, [3, 1], [0.7, 0.3]),
        route("r-1", 2, 7, [0, 2], [0.7311, 0.2689]),  # the other side of the tie
        route("r-9", 0, 7, [0, 1], [0.5, 0.5]),  # a request the tap never saw
    ]
    result = family_check.rule_agreement(logged, tapped, rule, {7: None})
    assert result.as_dict() == {
        "pairs": 4,
        "identical": 1,
        "tied": 1,
        "identical_untied": 1,
        "missing": 1,
        "unknown": 1,
        "weights_compared": 1,
        "weights_close": 1,
        "max_weight_diff": pytest.approx(1e-5, rel=1e-3),
        "agreement": 0.25,
        "agreement_untied": pytest.approx(1 / 3),
    }


def test_bfloat16_rounding_and_ties():
    x = np.array([1.0, 1.0 + 2**-9, 1.0 + 2**-7, 0.5 + 2**-10, -3.0, np.inf])
    assert routing_rules.round_to(x, "bfloat16").tolist() == [
        1.0,
        1.0,
        1.0 + 2**-7,
        0.5,
        -3.0,
        np.inf,
    ]
    assert routing_rules.round_to(x, "float64") is x
    rule = routing_rules.Rule("sigmoid", 1, True, correction_bias=True)
    logits, bias = np.array([[1e-5, 2e-5]]), np.array([0.0, 0.0])
    assert rule.route(logits, bias)[0].tolist() == [[1]]  # float64 tells them apart
    assert not rule.ties(logits, bias)[0]
    assert rule.ties(logits, bias, "bfloat16")[0]  # a bfloat16 kernel cannot: sigmoid 0.5 both
    assert rule.route(logits, bias, "bfloat16")[0].tolist() == [[0]]  # lower index first


def grouped_topk_on_cuda():
    """vLLM 0.15.1's grouped_topk as CUDA runs it for DeepSeek-V2 (no bias: not the fused
    kernel), without its torch.compile wrapper; its Python runs on CPU tensors too."""
    pytest.importorskip("vllm")
    from vllm.model_executor.layers.fused_moe.router import grouped_topk_router

    return grouped_topk_router.grouped_topk._torchdynamo_orig_callable


def routed_steps(logits, grouped_topk):
    """One pass of one request: a TapStep of ``logits``, the lines ``grouped_topk`` routes."""
    weights, ids = grouped_topk(logits, logits, 6, False, 1, 1, "softmax", 1.0, None)
    n = logits.shape[0]
    step = family_check.TapStep(["r"], np.array([n]), np.arange(n), {1: logits.float().numpy()})
    lines = [
        route("r", pos, 1, i, w)
        for pos, (i, w) in enumerate(zip(ids.tolist(), weights.tolist(), strict=True))
    ]
    return family_check.tapped_logits([step]), lines


def test_deepseek_v2_bfloat16_scores_on_dummy_logits_are_ties():
    """The H200 result (0 of 37,723 pairs, 630 tied) from vLLM's own CUDA routing code.

    V2-Lite's rule (softmax, top-6 of 64) on dummy-weight router logits (~1e-5) in
    bfloat16: every score is 1/64 in bfloat16, so vLLM picks by index, the same
    experts for every token; the float64 rule picks by the logits. Counted in the
    kernel's precision these are ties; with logits spread as a trained router's
    (realistic_router_logits) the rule agrees."""
    import torch

    grouped_topk = grouped_topk_on_cuda()
    rule = routing_rules.Rule("softmax", 6, False)
    generator = torch.Generator().manual_seed(0)
    dummy = (torch.randn(200, 64, generator=generator) * 1.5e-5).bfloat16()
    tapped, lines = routed_steps(dummy, grouped_topk)
    assert len({tuple(line.experts) for line in lines}) == 1  # one route for every token
    before = family_check.rule_agreement(lines, tapped, rule, {1: None})
    assert before.identical == 0 and before.tied < 0.05 * before.pairs  # the H200 signature
    after = family_check.rule_agreement(lines, tapped, rule, {1: None}, precision="bfloat16")
    assert after.tied == after.pairs  # every choice is a tie the kernel broke by index

    realistic = torch.randn(200, 64, generator=generator).bfloat16()
    tapped, lines = routed_steps(realistic, grouped_topk)
    result = family_check.rule_agreement(lines, tapped, rule, {1: None}, precision="bfloat16")
    assert result.identical_untied == result.pairs - result.tied
    assert result.agreement >= 0.9 and result.tied <= 0.1 * result.pairs, result
    assert result.weights_close == result.weights_compared == result.identical


def test_table_rows_and_errors(tmp_path):
    ok = {
        "family": "gpt_oss",
        "plan": {"config": "gpt-oss-20b.json"},
        "config": {"layers": 24},
        "card": "NVIDIA H200",
        "header": {"routing": {"quant_method": "Mxfp4MoEMethod", "monolithic_kernel": True}},
        "lines": {"route_lines": 1200, "expected": 1200},
        "capture": {"all_zeros": True},
        "rule": {
            "agreement": 0.999,
            "pairs": 1200,
            "tied": 1,
            "weights_close": 1198,
            "weights_compared": 1199,
            "max_weight_diff": 3e-7,
        },
    }
    failed = {"family": "llama4", "plan": {"config": "llama.json"}, "error": "OOM"}
    (tmp_path / "gpt_oss.json").write_text(json.dumps(ok))
    (tmp_path / "llama4.json").write_text(json.dumps(failed))
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "gpt_oss.json").write_text("{}")
    text = family_bench.table(tmp_path)
    assert (
        "| gpt_oss (gpt-oss-20b.json, 24) | Mxfp4MoEMethod (monolithic) | 1,200 / 1,200 "
        "| all zeros (monolithic kernel: vLLM's capture never sees its routes) "
        "| 99.90 % of 1,200 (1) "
        "| 1,198 / 1,199 (max diff 3e-07) | - |"
    ) in text
    assert "| llama4 (llama.json, ?) | - | - | - | - | - | error: OOM |" in text
    ok["counts"] = {"dump_equals_routes": True}
    ok["counts_graph_vs_routes"] = {"equal": False, "choices_differing": 3}
    (tmp_path / "gpt_oss.json").write_text(json.dumps(ok))
    (tmp_path / "gpt_oss-counts_graph.json").write_text(
        json.dumps({**failed, "mode": "counts_graph"})
    )
    text = family_bench.table(tmp_path)
    assert "| 1,198 / 1,199 (max diff 3e-07) | equal; 3 choices differ |" in text
    assert "counts_graph" not in text  # an engine of another mode is not a family row
    assert text.endswith("cards: NVIDIA H200\n")


def test_a_failing_family_does_not_stop_the_others(tmp_path):
    """Both engines fail at once (no GSM8K file): each gets its error, both waves run."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench/family_bench.py"),
            "run",
            "--out",
            str(out),
            "--families",
            "mixtral,glm4_moe",
            "--gsm8k",
            str(tmp_path / "missing.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for family in ("mixtral", "glm4_moe"):
        result = json.loads((out / f"{family}.json").read_text())
        assert "missing.jsonl" in result["error"], result
    assert (
        "== glm4_moe: exit status 1" in proc.stdout and "== mixtral: exit status 1" in proc.stdout
    )


def run_engine(plan: str, model_dir, tmp_path, *extra: str) -> dict:
    """``family_bench.py engine`` on the CPU build (eager, no vLLM capture); its result."""
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_MLA_DISABLE": "1",
        "PYTHONPATH": engine_pythonpath(),  # the plugin first, where the logger comes from it
    }
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench/family_bench.py"),
            "engine",
            plan,
            "--model-dir",
            str(model_dir),
            "--eager",
            "--no-capture",
            "--kv-cache-gib",
            "0",
            "--default-attention",
            "--out",
            str(tmp_path),
            "--n",
            "4",
            "--tokens",
            "4",
            "--log-dir",
            str(tmp_path / "logs"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    mode = extra[extra.index("--mode") + 1] if "--mode" in extra else "routes"
    return json.loads(
        (tmp_path / f"{plan if mode == 'routes' else f'{plan}-{mode}'}.json").read_text()
    )


@pytest.mark.e2e
def test_one_engine_on_the_cpu_build(family_models, tmp_path, patched):
    """The whole engine path (tap, log, rule) on a tiny DeepSeek-V3, eager, no vLLM capture."""
    result = run_engine(
        "deepseek_v3",
        family_models["deepseek_v3"],
        tmp_path,
        *("--load-format", "auto", "--dtype", "float32"),
    )
    lines, rule = result["lines"], result["rule"]
    assert lines["route_lines"] == lines["expected"] and lines["duplicates"] == 0
    assert result["moe_layers_as_planned"] and result["header"]["layers"] == [1, 2]
    assert rule["pairs"] == lines["expected"] and rule["missing"] == rule["unknown"] == 0
    assert rule["identical_untied"] == rule["pairs"] - rule["tied"]  # every untied pair
    assert rule["weights_close"] == rule["weights_compared"] == rule["identical"]
    assert rule["precision"] == "float32"  # the CPU kernels score in float32
    assert not (tmp_path / "logs" / "deepseek_v3.jsonl").exists()  # removed unless --keep-logs
    assert result["counts"]["dump_equals_routes"]  # the end-of-pass counts of the same passes
    assert result["counts"]["tokens"] == lines["expected"] // 2
    # counts mode counted in the forward pass, same prompts, its own engine
    counted = run_engine(
        "deepseek_v3",
        family_models["deepseek_v3"],
        tmp_path,
        *("--load-format", "auto", "--dtype", "float32", "--mode", "counts_graph"),
    )
    assert counted["counts"]["counts_path"] == "in_graph"
    assert counted["counts"]["dump_equals_windows"]
    family_bench.compare_modes(tmp_path, "deepseek_v3", ["routes", "counts_graph"])
    compared = json.loads((tmp_path / "deepseek_v3.json").read_text())["counts_graph_vs_routes"]
    assert compared == {**compared, "equal": True, "choices_differing": 0}


@pytest.mark.e2e
def test_dummy_weights_deepseek_engine_on_the_cpu_build(family_models, tmp_path, patched):
    """As the GPU bench runs: dummy weights, bfloat16, a DeepSeek-V2 (grouped softmax, x16).

    Dummy router logits are ~1e-5: their scores were near-ties the kernels broke
    by their rounding (89 % here, 0 % on the H200, where they were all equal in
    bfloat16). realistic_router_logits scales the routers as trained ones are."""
    result = run_engine(
        "deepseek_v2_lite",
        family_models["deepseek_v2"],
        tmp_path,
        *("--load-format", "dummy", "--dtype", "bfloat16"),
    )
    lines, rule = result["lines"], result["rule"]
    assert lines["route_lines"] == lines["expected"] and lines["duplicates"] == 0
    assert rule["pairs"] == lines["expected"] and rule["missing"] == rule["unknown"] == 0
    assert rule["agreement"] >= 0.99 and rule["agreement_untied"] >= 0.99, rule
    assert rule["tied"] <= 0.01 * rule["pairs"]
    assert rule["precision"] == "float32"
    assert rule["weights_close"] == rule["weights_compared"] == rule["identical"]
