"""The plugin's parts that need no engine: the entry point, the import hook, the wrappers'
decisions (which passes reach the logger), and the forward-pass readers of both runners.

The readers and wrappers are exercised here on objects shaped like vLLM's (the same
attribute names, checked against the installed release's classes where it has them);
the end-to-end tests run them inside real engines.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import torch
import vllm_under_test

from moe_route_log import hooks
from moe_route_log.adapters import engine_hooks, passes
from moe_route_log.adapters.when_imported import when_imported


def test_the_plugin_imports_nothing_heavy_when_logging_is_off():
    code = """
import sys
from moe_route_log import plugin
plugin.register()
heavy = [m for m in ("torch", "vllm", "numpy") if m in sys.modules]
assert not heavy, heavy
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PATH": ""}
    )
    assert out.returncode == 0, out.stderr


def test_a_callback_runs_when_its_module_is_imported_and_at_once_if_it_is(tmp_path, monkeypatch):
    (tmp_path / "late_module_for_the_test.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []
    when_imported("late_module_for_the_test", lambda m: seen.append(m.VALUE))
    assert seen == []
    import late_module_for_the_test  # noqa: F401

    assert seen == [1]
    when_imported("late_module_for_the_test", lambda m: seen.append(m.VALUE + 1))
    assert seen == [1, 2]
    del sys.modules["late_module_for_the_test"]


def test_positions_are_each_requests_computed_tokens_plus_the_offset_in_it():
    got = passes.positions(np.array([0, 40, 7]), np.array([3, 1, 2]))
    assert got.tolist() == [0, 1, 2, 40, 7, 8] and got.dtype == np.int64


def v1_runner(req_ids, tokens, computed, prompt_lens):
    """What a Model Runner V1 holds right after a pass (gpu_model_runner.py)."""
    loc = np.zeros(8, dtype=np.int32)
    loc[1 : len(tokens) + 1] = np.cumsum(tokens)
    loc[len(tokens) + 1 :] = sum(tokens)  # the tail: the pass's token count
    batch = types.SimpleNamespace(
        num_reqs=len(req_ids),
        req_ids=[*req_ids, None],
        num_prompt_tokens=np.array([*prompt_lens, 0]),
        num_computed_tokens_cpu=np.array([*computed, 0]),
    )
    return types.SimpleNamespace(
        input_batch=batch,
        query_start_loc=types.SimpleNamespace(np=loc, gpu=torch.from_numpy(loc)),
        input_ids=types.SimpleNamespace(gpu=torch.arange(16)),
    )


def test_a_v1_pass_is_read_from_the_input_batch_and_query_start_loc():
    runner = v1_runner(["a-1", "b-2"], [3, 1], [0, 9], [5, 4])
    got = passes.v1_pass(runner)
    assert got.req_ids == ["a-1", "b-2"]
    assert got.tokens_per_req.tolist() == [3, 1]
    assert got.prompt_lens.tolist() == [5, 4]
    assert got.positions.tolist() == [0, 1, 2, 9]
    assert got.input_ids is runner.input_ids.gpu
    assert passes.token_count_source(runner) is runner.query_start_loc.gpu
    assert passes.token_count_source(runner)[-1] == 4


def v2_runner(req_ids, tokens, computed, prompt_len_by_state, idx_mapping):
    """What a Model Runner V2 holds right after a pass (v1/worker/gpu/model_runner.py)."""
    batch = types.SimpleNamespace(
        req_ids=list(req_ids),
        num_reqs=len(req_ids),
        num_scheduled_tokens=np.array(tokens, dtype=np.int32),
        num_computed_tokens_np=np.array(computed, dtype=np.int32),
        idx_mapping_np=np.array(idx_mapping),
        input_ids=torch.arange(16, dtype=torch.int32),
    )
    assert set(vars(batch)) >= passes.V2_BATCH_FIELDS
    loc = torch.zeros(9, dtype=torch.int32)
    loc[-1] = sum(tokens)
    return types.SimpleNamespace(
        execute_model_state=types.SimpleNamespace(input_batch=batch),
        req_states=types.SimpleNamespace(
            prompt_len=types.SimpleNamespace(np=np.array(prompt_len_by_state))
        ),
        input_buffers=types.SimpleNamespace(query_start_loc=loc),
    )


def test_a_v2_pass_is_read_from_the_execute_model_state_and_the_request_states():
    runner = v2_runner(["x-1", "y-2"], [2, 1], [4, 30], [7, 11, 40], idx_mapping=[2, 0])
    got = passes.v2_pass(runner)
    assert got.req_ids == ["x-1", "y-2"]
    assert got.tokens_per_req.tolist() == [2, 1]
    assert got.prompt_lens.tolist() == [40, 7]  # by request state slot
    assert got.positions.tolist() == [4, 5, 30]
    assert got.input_ids is runner.execute_model_state.input_batch.input_ids
    assert passes.token_count_source(runner)[-1] == 3


def test_the_v2_reader_reads_what_the_installed_vllms_input_batch_holds_from_0_32_on():
    from vllm.v1.worker.gpu.input_batch import InputBatch

    assert passes.v2_readable(InputBatch) == (not vllm_under_test.patch_release())


def fake_runner_module(version: str) -> types.ModuleType:
    """A module whose GPUModelRunner.execute_model has the release's signature."""
    module = types.ModuleType(f"fake_runner_{version}")
    source = {
        "v1": """
            class GPUModelRunner:
                def __init__(self, runner):
                    self.__dict__.update(vars(runner))
                def execute_model(self, scheduler_output, intermediate_tensors=None):
                    return "output"
        """,
        "v2": """
            class GPUModelRunner:
                def __init__(self, runner):
                    self.__dict__.update(vars(runner))
                    self.states = [self.execute_model_state]
                    self.execute_model_state = None
                def execute_model(self, scheduler_output, intermediate_tensors=None,
                                  dummy_run=False, skip_attn_for_dummy_run=False):
                    if scheduler_output.total_num_scheduled_tokens or dummy_run:
                        self.execute_model_state = self.states[0]  # the pass ran
                    return "output"
        """,
    }[version]
    exec(textwrap.dedent(source), module.__dict__)
    return module


@pytest.fixture
def handed_on(monkeypatch) -> list:
    """The passes the wrappers hand to hooks.end_pass, with logging on."""
    got: list = []
    monkeypatch.setattr(hooks, "ACTIVE", True)
    monkeypatch.setattr(hooks, "end_pass", got.append)
    monkeypatch.setattr(hooks, "runner_created", lambda runner: None)
    return got


def scheduled(tokens: int):
    return types.SimpleNamespace(total_num_scheduled_tokens=tokens)


def test_a_v1_runner_hands_on_every_pass_that_ran_tokens(handed_on):
    module = fake_runner_module("v1")
    engine_hooks._runner_v1(module)
    engine_hooks._runner_v1(module)  # a second install wraps nothing again
    runner = module.GPUModelRunner(v1_runner(["a-1"], [2], [0], [2]))
    assert runner.execute_model(scheduled(2)) == "output"
    assert runner.execute_model(scheduled(0)) == "output"  # nothing scheduled: no forward
    assert [p.positions.tolist() for p in handed_on] == [[0, 1]]


def test_a_v2_runner_hands_on_real_passes_only_never_dummy_ones(handed_on):
    module = fake_runner_module("v2")
    module.InputBatch = dataclasses.make_dataclass("InputBatch", passes.V2_BATCH_FIELDS)
    engine_hooks._runner_v2(module)
    runner = module.GPUModelRunner(v2_runner(["x-1"], [1], [3], [5], [0]))
    runner.execute_model(scheduled(0), None, True)  # a dummy pass, dummy_run by position
    runner.execute_model_state = None
    runner.execute_model(scheduled(0), dummy_run=True)
    runner.execute_model_state = None
    runner.execute_model(scheduled(0))  # nothing scheduled: no forward, no new state
    assert handed_on == []
    runner.execute_model(scheduled(1))
    assert [p.positions.tolist() for p in handed_on] == [[3]]
    runner.execute_model(scheduled(0))  # the state left by the last pass is not a new pass
    assert len(handed_on) == 1


def test_the_installed_vllms_v2_runner_is_wrapped_or_refused_when_built(handed_on):
    """From 0.32 the V2 runner's execute_model takes dummy_run and is wrapped; 0.15.1's
    experimental V2 keeps other state, and building it with the plugin on is refused."""
    from vllm.v1.worker.gpu import model_runner

    from moe_route_log.hooks import UnsupportedSetupError

    module = types.ModuleType("copy_of_the_v2_runner")
    module.InputBatch = model_runner.InputBatch
    module.GPUModelRunner = type("GPUModelRunner", (), {"__init__": lambda self: None})
    module.GPUModelRunner.execute_model = model_runner.GPUModelRunner.execute_model
    engine_hooks._runner_v2(module)
    if vllm_under_test.patch_release():
        with pytest.raises(UnsupportedSetupError, match="VLLM_USE_V2_MODEL_RUNNER"):
            module.GPUModelRunner()
        assert module.GPUModelRunner.execute_model is model_runner.GPUModelRunner.execute_model
    else:
        module.GPUModelRunner()
        assert module.GPUModelRunner.execute_model is not model_runner.GPUModelRunner.execute_model
