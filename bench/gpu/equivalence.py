"""On CUDA: prefix-shared log-probs and gradients against TRL's fused pass (fp32), and bf16 agreement."""
import torch
from trl.trainer.utils import add_fused_lm_head

from prlm.models import load_policy
from prlm.training.prefix_sharing import prefix_shared_logps

model, tok = load_policy("smollm2-135m", device="cuda")
add_fused_lm_head(model, temperature=0.9, outputs=("log_probs", "entropy"))
model.train()
g = torch.Generator().manual_seed(0)
prompts = ["a short prompt " * 20, "a much longer prompt with many more words " * 40]
enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
ids = torch.cat([enc["input_ids"].repeat_interleave(4, 0), torch.randint(10, 9000, (8, 48), generator=g)], 1).cuda()
mask = torch.cat([enc["attention_mask"].repeat_interleave(4, 0), torch.ones(8, 48, dtype=torch.long)], 1).cuda()
mask[1, -10:] = 0
w = torch.randn(8, 48, generator=g).cuda()
labels = ids.masked_fill(mask == 0, -100)
labels[:, :-48] = -100
for dtype in (None, torch.bfloat16):
    ctx = torch.autocast("cuda", dtype=dtype) if dtype else torch.autocast("cuda", enabled=False)
    model.zero_grad()
    with ctx:
        stock = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs[:, -48:]
        (stock * w).sum().backward()
    gs = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    with ctx:
        shared, _ = prefix_shared_logps(model, ids, mask, 48, 0.9, False)
        (shared * w).sum().backward()
    gp = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    rel = max(((gp[n] - gs[n]).norm() / (gs[n].norm() + 1e-12)).item() for n in gs)
    print(f"{dtype or 'fp32'}: max |logp diff| {(shared - stock).abs().max().item():.2e}, "
          f"max relative grad diff {rel:.2e}")
