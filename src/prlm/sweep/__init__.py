"""`prlm sweep CONFIG`: robustness of the methods across retrievers and k.

Every (retriever, k) cell of the grid evaluates `rag` and `prlm`;
`no-profile` is evaluated once (it reads no profile). The main cell (bm25,
k=4 by default) also evaluates the supervised baseline `sft` and any extra
checkpoints (ablations) with the reasoning prompt. Each retriever ranks the
split once (`retrieval/NAME.jsonl`, top max(ks)) and every cell reads that
ranking. Cells are stages of `prlm run`'s mechanism: a rerun skips every cell
whose config, model files and retrieval are unchanged. The report
(`report.md`, `cells.csv`, `plots/`) is rewritten from the run folders at
the end of every sweep.
"""

from prlm.sweep.grid import (
    GRID_METHODS,
    SWEEP_METHODS,
    SWEEP_RETRIEVERS,
    Cell,
    SweepConfig,
    eval_options,
    load_sweep_config,
    sweep_cells,
)
from prlm.sweep.report import write_sweep_report
from prlm.sweep.run import build_sweep_stages, run_sweep

__all__ = ["GRID_METHODS", "SWEEP_METHODS", "SWEEP_RETRIEVERS", "Cell", "SweepConfig", "build_sweep_stages",
           "eval_options", "load_sweep_config", "run_sweep", "sweep_cells", "write_sweep_report"]
