"""The names of the files and folders edgeseg writes: the contract between the command that
writes a directory and every command that reads it (DESIGN.md section 2)."""

# model directory
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# beside a model that edgeseg prune made for a MACs or latency target: the sensitivity scan
PRUNE_SCAN_JSON = "sensitivity.json"
PRUNE_SCAN_CSV = "sensitivity.csv"
PRUNE_SCAN_PNG = "sensitivity.png"

# run directory (edgeseg train)
RUN_CONFIG = "config.yaml"
METRICS_CSV = "metrics.csv"
TENSORBOARD_DIR = "tb"
LAST_DIR = "last"
BEST_DIR = "best"
TRAIN_STATE = "state.json"
CHECKPOINTS_DIR = "checkpoints"  # periodic model directories (save_every), named CHECKPOINT_PREFIX + epoch
CHECKPOINT_PREFIX = "epoch-"
RUN_END = "finished.json"  # written when the run stops (done or diverged); edgeseg eval --watch waits for it
EVAL_DIR = "eval"  # edgeseg eval RUN_DIR --watch/--all: TensorBoard events and evaluations.csv
EVAL_CSV = "evaluations.csv"

# folds directory (edgeseg folds): <runs_dir>/<name>-folds/ holds one run directory per fold
FOLDS_SUFFIX = "-folds"
FOLD_PREFIX = "fold-"
ORDINARY_RUN = "ordinary"
FOLDS_JSON = "folds.json"

# pipeline directory (edgeseg run)
RECIPE_FILE = "recipe.yaml"
STAGES_DIR = "stages"
STAGE_SPEC = "spec.json"
STAGE_METRICS = "metrics.json"
STAGE_MODEL = "model"
STAGE_RUN = "run"
REPORT_MD = "report.md"
REPORT_JSON = "report.json"

# ONNX export and deploy bundle
BUNDLE_MODEL = "model.onnx"
BUNDLE_META = "meta.yaml"
BUNDLE_RUNNER = "run.py"

# an output directory's record of which command wrote it (see fileio.claim_output)
OUTPUT_MARK = ".edgeseg-output.json"
