# Users' rule-based proxies: every file listed in config `proxy_rules` (paths relative to the
# working directory) is included here. A rule in it that writes
# {RESULTS}/scores/{sample_set}/NAME.csv (columns id,proxy,value) makes NAME a proxy: naming it
# in evaluation.proxies scores the base model and every checkpoint with it, and
# judgements: {proxy: NAME} trains on it in proxy-scored rounds. The names come from those
# outputs and nowhere else. Then the config is checked (common.smk), knowing every name.

import os

SCORE_OUTPUT = re.compile(
    re.escape(f"{RESULTS}/scores/") + r"\{sample_set\}/(\w+)\.csv"
)


def proxy_rule_file(path):
    """The absolute path of a listed rule file (include: would resolve it from this folder)."""
    if not Path(path).is_file():
        raise WorkflowError(
            f"proxy_rules: '{path}' does not exist (paths are relative to the working "
            f"directory, {os.getcwd()})"
        )
    return os.path.abspath(path)


def register_rule_proxies(path, rules):
    """Record the proxy each of ``rules`` (included from ``path``) writes a score table for."""
    names = [
        match[1]
        for rule in rules
        for output in rule.output
        if (match := SCORE_OUTPUT.fullmatch(str(output)))
    ]
    if not names:
        raise WorkflowError(
            f"proxy_rules: '{path}' has no rule writing {RESULTS}/scores/{{sample_set}}/NAME.csv"
        )
    for name in names:
        if name in (REGISTERED_PROXIES or ()) or name in RULE_PROXIES:
            raise WorkflowError(
                f"proxy_rules: '{path}' writes scores of '{name}', a proxy that "
                f"{RULE_PROXIES.get(name, 'd3po.rewards')} already provides; rename it"
            )
        RULE_PROXIES[name] = path


for proxy_rules_path in config["proxy_rules"]:
    rules_before = {rule.name for rule in workflow.rules}
    workflow.include(proxy_rule_file(proxy_rules_path))
    new_rules = [rule for rule in workflow.rules if rule.name not in rules_before]
    register_rule_proxies(proxy_rules_path, new_rules)


check_config(config)
