# Published checkpoints (paper suite): download, verify, and the all_checkpoints target. The registry is the
# suite's checkpoints: section; checkpoint NAME is the file resources/checkpoints/NAME.EXT (ext default pt). A file
# placed there by hand is never downloaded; its verification stamp NAME.EXT.sha256 checks it against the
# registry's sha256, or records it in resources/checkpoints/sha256.lock.yaml (trust on first use).

localrules:
    download_checkpoint,
    verify_checkpoint,
    all_checkpoints,
    fetch_ldce_targets,
    fetch_ldce_pets,
    fetch_ldce_flowers,
    fetch_svce_hierarchy,
    fetch_dime_minival,


# A registry name that is also a models: name is downloaded, never trained.
ruleorder: download_checkpoint > train_model


# The output is update(): Snakemake neither deletes an existing checkpoint before the job (the script verifies a file
# that is present and never downloads over it) nor after a failure (it restores its backup), so no rerun, forced or
# not, can leave the user without the file they had.
rule download_checkpoint:
    output:
        checkpoint=update("resources/checkpoints/{ckpt_file}"),
    wildcard_constraints:
        ckpt_file=CHECKPOINT_FILES,
    params:
        name=checkpoint_name,
        entry=checkpoint_entry,
        lock=CHECKPOINT_LOCK,
    # one more job attempt on top of the script's own retries with exponential back-off (CFX_DOWNLOAD_RETRIES,
    # CFX_DOWNLOAD_BACKOFF); not more: a sha256 mismatch would download the whole file again each time
    retries: 1
    log:
        "logs/download/{ckpt_file}.log",
    benchmark:
        "results/benchmarks/download_checkpoint/{ckpt_file}.tsv"
    conda:
        ENV
    script:
        "../scripts/download_checkpoint.py"


rule verify_checkpoint:
    input:
        checkpoint="resources/checkpoints/{ckpt_file}",
    output:
        stamp="resources/checkpoints/{ckpt_file}.sha256",
    wildcard_constraints:
        ckpt_file=CHECKPOINT_FILES,
    params:
        name=checkpoint_name,
        entry=checkpoint_entry,
        pin_change=checkpoint_pin_change,
        lock=CHECKPOINT_LOCK,
    log:
        "logs/download/{ckpt_file}.verify.log",
    benchmark:
        "results/benchmarks/verify_checkpoint/{ckpt_file}.verify.tsv"
    conda:
        ENV
    script:
        "../scripts/verify_checkpoint.py"


# snakemake all_checkpoints --config suite=paper: fetch and verify every registry checkpoint (e.g. on a login node)
rule all_checkpoints:
    input:
        checkpoints=all_checkpoint_stamps,


# LDCE's per-image ImageNet targets and the classes closest to each class (upstream data/ files at a pinned commit,
# sha256-checked, written atomically; cfx.data.ldce_targets): read by experiments with image_targets: ldce
rule fetch_ldce_targets:
    output:
        targets=LDCE_TARGETS_FILE,
        closest="resources/data/ldce/synset_closest_idx.yaml",
        class_names=LDCE_CLASS_NAMES_FILE,
    params:
        group="targets",
    retries: 1
    log:
        "logs/download/ldce_targets.log",
    benchmark:
        "results/benchmarks/fetch_ldce_targets/ldce_targets.tsv"
    conda:
        ENV
    script:
        "../scripts/fetch_ldce_files.py"


# LDCE's Oxford-IIIT Pets files (upstream data/ at the same pinned commit, sha256-checked, atomic; cfx.data.ldce_targets):
# the per-image targets read by experiments with image_targets: ldce_pets, the class names of the zero-shot classifier's
# and LDCE-txt's prompts
rule fetch_ldce_pets:
    output:
        targets=LDCE_PETS_TARGETS_FILE,
        labels=LDCE_PETS_LABELS_FILE,
    params:
        group="pets",
    retries: 1
    log:
        "logs/download/ldce_pets.log",
    benchmark:
        "results/benchmarks/fetch_ldce_pets/ldce_pets.tsv"
    conda:
        ENV
    script:
        "../scripts/fetch_ldce_files.py"


# LDCE's Oxford Flowers-102 files (upstream data/ at the same pinned commit, sha256-checked, atomic;
# cfx.data.ldce_targets): the per-image targets read by experiments with image_targets: ldce_flowers, the class names
# of LDCE-txt's prompts
rule fetch_ldce_flowers:
    output:
        targets=LDCE_FLOWERS_TARGETS_FILE,
        labels=LDCE_FLOWERS_LABELS_FILE,
    params:
        group="flowers",
    retries: 1
    log:
        "logs/download/ldce_flowers.log",
    benchmark:
        "results/benchmarks/fetch_ldce_flowers/ldce_flowers.tsv"
    conda:
        ENV
    script:
        "../scripts/fetch_ldce_files.py"


# SVCE's WordNet files (IN_info/ at its pinned commit, sha256-checked, atomic; cfx.data.wordnet): the clusters and
# targets of experiments with image_targets: svce_clusters, and ImageNet's class names of its figure
rule fetch_svce_hierarchy:
    output:
        is_a=SVCE_HIERARCHY_PATHS[0],
        words=SVCE_HIERARCHY_PATHS[1],
        class_index=SVCE_HIERARCHY_PATHS[2],
    retries: 1
    log:
        "logs/download/svce_hierarchy.log",
    benchmark:
        "results/benchmarks/fetch_svce_hierarchy/svce_hierarchy.tsv"
    conda:
        ENV
    script:
        "../scripts/fetch_svce_hierarchy.py"


# DiME's / ACE's CelebA mini-val list (upstream utils/minival.csv at a pinned commit, sha256-checked, atomic;
# cfx.data.minival): read by experiments with subset: dime_minival
rule fetch_dime_minival:
    output:
        subset="resources/data/dime/minival.csv",
    retries: 1
    log:
        "logs/download/dime_minival.log",
    benchmark:
        "results/benchmarks/fetch_dime_minival/dime_minival.tsv"
    conda:
        ENV
    script:
        "../scripts/fetch_dime_minival.py"
