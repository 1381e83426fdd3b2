"""A SmolLM2-135M-shaped model with random weights in a prlm cache folder (the GPU machine gets no weights)."""
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

out = Path(os.environ["PRLM_CACHE"]) / "smollm2-135m-instruct"
out.mkdir(parents=True, exist_ok=True)
for f in Path(".gpu/smollm-files").iterdir():
    shutil.copy(f, out / f.name)
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(out))
model.save_pretrained(out)
(out / ".prlm-complete").write_text("random weights for a GPU check\n")
print("random smollm2-shaped model", sum(p.numel() for p in model.parameters()))
