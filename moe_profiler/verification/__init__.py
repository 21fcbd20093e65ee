"""What only tests and benchmarks use to check the logger and the report.

oracle          a log checked against an independent record of the same routes (vLLM's
                own capture, transformers' router top-k)
routing_rules   each MoE family's routing rule in numpy, from its config.json
family_check    a log checked against those rules applied to the logits the router saw
tiny_families   tiny random-weight models of every MoE family, saved through transformers
report_browser  a report opened in headless Chromium: script errors, network use, screenshot
"""
