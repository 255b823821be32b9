"""Issue 11's upper-bound experiment: how far does a signnet-shaped network trained on the very ImageNet-C corruptions get at severity 3 on 32 px signs?

Not part of the package; the figures are in gtsr/models/README.md (*How far 97% is*). Run once on a lent H200 GPU:
    python docs/corruption_ceiling.py DATA.npz          # widths 32/64 and a clean-only control
    BIG=1 COPIES=8 python docs/corruption_ceiling.py DATA.npz   # width 64 for 40 epochs and width 128
where DATA.npz holds xtr/ytr (12,000 training images, N x 32 x 32 x 3 uint8, and their class ids) and xte/yte (3,000
test-half images), taken from `gtsr.data.image_cache(load_gtsrb(DIR).path, 32)`. Needs torch with CUDA and imagecorruptions;
`gtsr.model.signnet`'s layers are restated below (same design, any width) so that it runs where gtsr is not installed.
"""
import os, sys, time, json, warnings, numpy as np, multiprocessing as mp
warnings.filterwarnings('ignore')
np.float_ = np.float64
import torch, torch.nn as nn, torch.nn.functional as F
C = ['gaussian_noise', 'motion_blur', 'defocus_blur', 'jpeg_compression', 'contrast', 'brightness', 'pixelate', 'fog']

def job(a):
    imgs, seed, fixed = a
    from imagecorruptions import corrupt
    rng = np.random.default_rng(seed); np.random.seed(seed % 2**32)
    out = []
    for im in imgs:
        c, s = fixed if fixed else (C[rng.integers(len(C))], int(rng.integers(1, 6)))
        out.append(corrupt(np.ascontiguousarray(im), corruption_name=c, severity=s))
    return np.stack(out)

def corrupt_all(x, seed, fixed=None, pool=None):
    parts = np.array_split(x, 64)
    return np.concatenate(pool.map(job, [(p, seed * 1000 + k, fixed) for k, p in enumerate(parts)]))

class ContrastNorm(nn.Module):
    def forward(self, x):
        return (x - x.mean((1, 2, 3), keepdim=True)) / (x.std((1, 2, 3), keepdim=True) + 1e-3)
def conv_bn(i, o, s=1, relu=True):
    l = [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o)]
    return nn.Sequential(*l, nn.ReLU(inplace=True)) if relu else nn.Sequential(*l)
class Res(nn.Module):
    def __init__(s, n): super().__init__(); s.c = nn.Sequential(conv_bn(n, n), conv_bn(n, n, relu=False))
    def forward(s, x): return F.relu(x + s.c(x))
def signnet(n, w):
    return nn.Sequential(ContrastNorm(), conv_bn(3, w), conv_bn(w, 2*w, 2), Res(2*w), conv_bn(2*w, 4*w, 2), Res(4*w),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4*w, n))

def warp(x):
    n = len(x); a = (torch.rand(n, device=x.device) - 0.5) * 2 * np.pi / 12; s = torch.empty(n, device=x.device).uniform_(0.9, 1.15)
    t = (torch.rand(n, 2, device=x.device) - 0.5) * 0.15
    th = torch.stack([torch.stack([torch.cos(a) / s, -torch.sin(a) / s, t[:, 0]], 1), torch.stack([torch.sin(a) / s, torch.cos(a) / s, t[:, 1]], 1)], 1)
    return F.grid_sample(x, F.affine_grid(th, x.shape, align_corners=False), padding_mode='border', align_corners=False)

def train(x, y, w, epochs, dev, seed=0):
    torch.manual_seed(seed)
    net = signnet(43, w).to(dev).to(memory_format=torch.channels_last)
    X = torch.from_numpy(x).to(dev).permute(0, 3, 1, 2).float() / 255; Y = torch.from_numpy(y).to(dev)
    bs = 256; spe = len(Y) // bs
    opt = torch.optim.AdamW(net.parameters(), 4e-3, weight_decay=0.05)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, 4e-3, total_steps=epochs * spe)
    for ep in range(epochs):
        perm = torch.randperm(len(Y), device=dev); net.train()
        for k in range(spe):
            i = perm[k*bs:(k+1)*bs]
            with torch.autocast('cuda', torch.bfloat16): loss = F.cross_entropy(net(warp(X[i])), Y[i])
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step(); sch.step()
    return net.eval()

@torch.no_grad()
def acc(net, x, y, dev):
    X = torch.from_numpy(x).to(dev).permute(0, 3, 1, 2).float() / 255
    p = torch.cat([net(X[i:i+2048]).argmax(1) for i in range(0, len(X), 2048)]).cpu().numpy()
    return float((p == y).mean())

if __name__ == '__main__':
    t0 = time.time(); dev = 'cuda'
    d = np.load(sys.argv[1]); xtr, ytr, xte, yte = d['xtr'], d['ytr'], d['xte'], d['yte']
    pool = mp.Pool(16)
    copies = int(os.environ.get('COPIES', 4))
    xc = np.concatenate([corrupt_all(xtr, 1 + k, pool=pool) for k in range(copies)])
    print(f"train corrupted {xc.shape} {time.time()-t0:.0f}s", flush=True)
    tests = {(c, s): corrupt_all(xte, 99, (c, s), pool) for c in C for s in (1, 3, 5)}
    print(f"test corrupted {time.time()-t0:.0f}s", flush=True)
    res = {}
    xa, ya = np.concatenate([xtr, xc]), np.concatenate([ytr] * (copies + 1))
    runs = {'clean-w32': (xtr, ytr, 32, 40), 'corr-w32': (xa, ya, 32, 20), 'corr-w64': (xa, ya, 64, 20)}
    if os.environ.get('BIG'): runs = {'corr-w64-e40': (xa, ya, 64, 40), 'corr-w128-e30': (xa, ya, 128, 30)}
    for name, (x, y, w, ep) in runs.items():
        net = train(x, y, w, ep, dev)
        r = dict(clean=acc(net, xte, yte, dev), **{f"{c}@{s}": acc(net, tests[c, s], yte, dev) for c in C for s in (1, 3, 5)})
        for s in (1, 3, 5): r[f'mean@{s}'] = float(np.mean([r[f'{c}@{s}'] for c in C]))
        res[name] = r
        print(name, f"{time.time()-t0:.0f}s", json.dumps({k: round(v, 4) for k, v in r.items() if '@3' in k or k == 'clean' or 'mean' in k}), flush=True)
    json.dump(res, open(os.path.join(os.environ.get('OUT', '.'), 'ceiling.json'), 'w'), indent=1)
