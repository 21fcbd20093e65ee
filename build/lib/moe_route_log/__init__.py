"""Per-token MoE routing log for vLLM 0.15.1, switched on by VLLM_LOG_MOE.

Data flow, one module a step:
  envs.py        the VLLM_LOG_MOE* variables: declared, parsed, checked
  hooks.py       the functions vLLM's files call (model loaded, step done)
  recorder.py    device side: routes -> static buffers (CUDA-graph safe)
  session.py     buffers -> host slots -> pipe, off the step loop
  wire.py        the frames on that pipe
  writer.py      the writer process: frames -> JSONL file
  log_format.py  the JSONL lines themselves (header, routes, trailer)
  naming.py      one file per logging process

Importing this package imports nothing else: the writer process loads its
modules without vLLM or torch.
"""
