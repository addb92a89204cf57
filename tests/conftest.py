import torch

# The suite works on small tensors, where intra-op threads only add contention (on a loaded 2-core
# machine, 10x slower). One thread also makes timings of tests steady.
torch.set_num_threads(1)
