"""BlockMask construction time on CUDA: megajepa.masking.block_mask (document ranges) vs
torch's create_block_mask (not compiled: compiling it took over 40 s on the H200), the same
packed rows (7 x 4096). GPU only:  python scripts/bench_block_mask.py"""
import torch, time
from torch.nn.attention.flex_attention import create_block_mask
from megajepa.masking import block_mask, mask_mod_for
from megajepa.layout import pack, Example
g = torch.Generator().manual_seed(0)
def view(lo, hi):
    m = int(torch.randint(lo, hi+1, (1,), generator=g)); return torch.randint(16, 1000, (m,), generator=g).tolist()
b = pack([Example("pair", [view(40,400), view(20,200)]) for _ in range(60)], 4096, k=3, pred_ids=[2,3,4], pad_id=0).to("cuda")
R = b.doc_ids.shape[0]
def t(fn):
    fn(); torch.cuda.synchronize(); ts=[]
    for _ in range(20):
        torch.cuda.synchronize(); t0=time.perf_counter(); fn(); torch.cuda.synchronize(); ts.append(time.perf_counter()-t0)
    return 1000*sorted(ts)[len(ts)//2]
print(f"rows {R} x 4096: ours {t(lambda: block_mask(b.doc_ids, b.roles)):.2f} ms; create_block_mask (not compiled) {t(lambda: create_block_mask(mask_mod_for(b.doc_ids, b.roles), R, None, 4096, 4096, device='cuda', _compile=False)):.2f} ms")
