"""Analyses of route logs, one module per question, each an accumulator fed RouteBlocks.

load (prefill/decode usage), expert_parallel (EP what-if, EPLB, SGLang export),
coactivation, layer_paths, locality, token_experts, text_view, compare; pipeline
runs them all in one read and html_report lays the results out as one page.
"""
