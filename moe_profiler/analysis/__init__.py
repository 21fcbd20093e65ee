"""Analyses of route logs: one module per question, each exporting one ``ANALYSIS``.

description     what an analysis declares (question, needs, its steps) and is given (Run, Options)
registry        ANALYSES, in page order: the one list to add an analysis to
pipeline        logs -> every analysis in one read -> analysis.json, report.html, SGLang's loads
html_report     the page around the sections: overview, navigation, one section per analysis
html_parts      figure, table, number, note: what each section's HTML is made of
common          logged layers as rows, safe shares, the run's name for titles
load            usage per expert and layer, prefill vs decode, balance metrics
expert_parallel expert parallelism on N GPUs: per-pass balance, vLLM's EPLB, SGLang's export
coactivation    experts chosen together for one token, lift over chance
layer_paths     top-1 at one layer -> top-1 at the next, mutual information
locality        consecutive decode tokens of a request: same experts?
token_experts   input tokens each expert is over-represented on
text_view       one request's text coloured by its top-1 expert
compare         a second run's expert shares against this one's
usage_summary   plot_experts.py's outputs: summary JSON, histogram, table (from load's counts)
"""
