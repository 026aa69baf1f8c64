# Users' rule-based proxies: every file listed in config `proxy_rules` (paths relative to the
# working directory) is included here. A rule in it that writes
# {RESULTS}/scores/{sample_set}/NAME.csv (columns id,proxy,value) makes NAME a proxy: naming it
# in evaluation.proxies scores the base model and every checkpoint with it, and
# judgements: {proxy: NAME} trains on it in proxy-scored rounds. The names come from those
# outputs and nowhere else. Then the config is checked (common.smk), knowing every name.

for proxy_rules_path in config["proxy_rules"]:
    rules_before = {rule.name for rule in workflow.rules}
    workflow.include(proxy_rule_file(proxy_rules_path))
    new_rules = [rule for rule in workflow.rules if rule.name not in rules_before]
    register_rule_proxies(proxy_rules_path, new_rules)


check_config(config)
