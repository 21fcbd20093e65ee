"""Analyses of routing records: route and counts logs, dumps, vLLM's own routed_experts.

One module per question, each exporting one ``ANALYSIS``.

description     what an analysis declares (question, needs, its steps) and is given (Run, Options)
registry        ANALYSES, in page order: the one list to add an analysis to
inputs          each input file's kind (routes or counts log, dump, vLLM's routed_experts),
                told by its content, and what it provides
coverage        which inputs each analysis is fed; a sentence for what they cannot answer
pipeline        inputs -> every analysis in one read -> analysis.json, report.html, SGLang's loads
html_report     the page around the sections: overview, navigation, one section per analysis
html_parts      figure, table, number, note: what each section's HTML is made of
common          logged layers as rows, safe shares, the run's name for titles
load            usage per expert and layer, prefill vs decode, balance metrics
time_series     per layer balance and hottest experts per time window (counts logs, dumps)
expert_parallel expert parallelism on N GPUs: per-pass balance, vLLM's EPLB, SGLang's export
coactivation    experts chosen together for one token, lift over chance
layer_paths     experts at one layer -> experts at the next: top-k lift, top-1 information
locality        consecutive decode tokens of a request: same experts?
token_experts   input tokens each expert is over-represented on
text_view       one request's text coloured by its top-1 expert
compare         a second run's expert shares against this one's
usage_summary   plot_experts.py's outputs: summary JSON, histogram, table (from load's counts)
"""
