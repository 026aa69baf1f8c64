# A rule-based proxy: CLIP score (image-prompt cosine similarity with open_clip), in its own
# environment. List this file in the config to use it, and nothing else:
#
#   proxy_rules: [workflow/proxies/clip_score.smk]
#   evaluation: {proxies: [..., clip_score]}             # scores the base model and checkpoints
#   proxies:
#     clip_score: {model: ViT-B-32, pretrained: /models/open_clip_vit_b32.bin}
#
# The proxy's name is the file the rule writes, {RESULTS}/scores/{sample_set}/clip_score.csv
# (columns id,proxy,value; every image of the set once). Copy this file to add another.


rule clip_score:
    input:
        samples=f"{RESULTS}/samples/{{sample_set}}",
    output:
        csv=f"{RESULTS}/scores/{{sample_set}}/clip_score.csv",
    log:
        f"{RESULTS}/logs/clip_score/{{sample_set}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/clip_score/{{sample_set}}.tsv"
    group:
        "score"  # bundled with the other score jobs under the slurm profile
    conda:
        "envs/clip_score.yaml"
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),  # config resources.evaluate, as every score job
        bundle_slot=1,
    params:
        # model (open_clip name or local-dir:FOLDER), pretrained (tag in the cache, or a
        # weights file), cache_dir, batch_size
        options=lambda wildcards: config["proxies"].get("clip_score", {}),
    script:
        "scripts/clip_score.py"
