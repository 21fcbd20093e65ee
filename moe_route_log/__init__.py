"""Per-token MoE routing log for vLLM 0.15.1 through 0.34.0, switched on by VLLM_LOG_MOE.

It reaches vLLM as a pip-installed plugin (``plugin.py``, every release) or, in 0.15.1,
as a copy inside vLLM made by the patch (``moe_profiler/patching.py``); both call
``hooks.py``. Every module, in the order the data flows through them.

How it gets in (every vLLM process):
  plugin.py        the ``vllm.general_plugins`` entry point: with VLLM_LOG_MOE set, wrap
                   vLLM's modules as the process imports them; unset, nothing
  adapters/        what differs between vLLM releases, each naming the vLLM files and lines
                   it depends on: MoE layers (moe_layers), forward passes (passes), the
                   plugin's wrappers (engine_hooks, routing_taps, when_imported)

In the engine process (inside vLLM; they import torch and vLLM):
  envs.py          the VLLM_LOG_MOE* variables: declared, parsed, checked (pure)
  hooks.py         the functions vLLM calls (runner built, model loaded, warm-up over,
                   pass done, control, serve, shutdown)
  vllm_logging.py  the logger's messages in vLLM's logger tree, whichever way it came in
  routing.py       what a layer's router weights mean (the header's ``routing``)
  recorder.py      each logged layer: routes -> static device buffers (CUDA-graph safe)
  graph_counts.py  opt-in counts mode: each logged layer counts inside the forward pass
  graph_kernel.py  its Triton kernel
  session.py       the engine thread after each pass: hand the pass on, keep the open
                   window, run the controls (start, stop, dump, status, totals)
  window.py        the open window's account (passes, tokens, prompt tokens)
  counts.py        the end of a pass on the device: count the routes, stage them
  step_kernel.py   its Triton kernel
  messages.py      what the engine thread tells the host drain: one type per kind
  drain.py         the drain thread: staged passes -> host -> writer pipe; window totals;
                   the trailer
  totals.py        counts of closed windows summed on the host (the dump, the metrics)

In whatever process drives the engine (an offline ``LLM`` user, ``vllm serve``):
  control.py       start / stop / dump / status through collective_rpc; merges answers (pure)
  server.py        ``vllm serve``: SGLang's recorder endpoints and expert-load metrics

Shared by the engine and the writer process (pure Python + numpy):
  wire.py          the frames on the pipe from the engine to its writer
  log_format.py    the shape of every line of the log (header, route, request, counts,
                   control, trailer)
  naming.py        one file per logging process; the model's display name

In the writer process (started by ``writer.WriterProcess``; no vLLM, no torch):
  writer.py        frames -> JSONL file (order, rotation, file locks, trailer)
  encoders.py      route lines from ROUTES frames, here or in a pool of processes

Importing this package imports nothing else: the writer process loads its
modules without vLLM or torch.
"""
