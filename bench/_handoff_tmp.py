import sys, time, torch, numpy as np
sys.path.insert(0, "src")
from picstory.data.batches import BatchIterator
from picstory.config import AugmentConfig
torch.set_num_threads(int(sys.argv[1]))
n=512
arr = np.random.randint(0,255,(n,224,224,3),np.uint8)
labels = torch.zeros(n, dtype=torch.long)
def run(images, aug, label):
    it = BatchIterator(images, labels, 64, (0.5,)*3, (0.25,)*3, augment=aug, shuffle=True, seed=0)
    t = time.perf_counter()
    for x, y in it: pass
    d=time.perf_counter()-t; print(f"{label}: {n/d:.0f} img/s")
for aug in (None, AugmentConfig(rrc_scale=0.35)):
    run(torch.from_numpy(arr).permute(0,3,1,2), aug, f"permuted view aug={aug is not None}")
    t=time.perf_counter(); c=torch.from_numpy(arr).permute(0,3,1,2).contiguous(); d=time.perf_counter()-t
    print(f"  contiguous copy {n/d:.0f} img/s")
    run(c, aug, f"contiguous aug={aug is not None}")
