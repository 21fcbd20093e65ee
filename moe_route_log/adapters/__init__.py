"""What differs between vLLM releases, in small adapters chosen by what vLLM's objects have.

  moe_layers.py     an MoE layer as one view: 0.15.1's FusedMoE or 0.24+'s MoERunner
  passes.py         what a forward pass ran: Model Runner V1 or V2
  routing_taps.py   (plugin) a logged layer hands its routes to its recorder
  engine_hooks.py   (plugin) vLLM's loader, runners, workers and HTTP server call hooks.py
  when_imported.py  (plugin) wrap a vLLM module once the process imports it

Each names the vLLM files and lines it depends on, per release. The patch for 0.15.1
uses moe_layers and passes too; its insertions stand where the plugin's wrappers do.
Nothing outside this package knows which release it runs in.
"""
