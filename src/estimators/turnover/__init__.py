"""Turn-over dropout (Kobayashi et al. 2020, arXiv 2012.04207): memorization and influence from ONE run: the
masks (masks.py), the masked network (network.py), the job that trains and evaluates it (job.py), its summary
(summary.py) and its registration as an estimator (estimator.py).

    python -m src.run estimator=turnover experiment=fz_mnist                 # one run, seed 0
    python -m src.run estimator=turnover experiment=fz_mnist seed=3 estimator.influence=none
    python -m src.run -m estimator=turnover experiment=fz_mnist seed=0..1    # two independent runs

Every training example i owns a fixed half m_i of the units of every hidden layer; the model trains on the
whole training set (`subset.ratio` is ignored) with example i passing only through m_i, and is then
evaluated under m_i and under the complement ~m_i, a sub-network that never saw i directly:
    mem(i)     = correct(x_i; m_i)  - correct(x_i; ~m_i)     mem_soft: the same with the probability
    infl(i, j) = correct(x'_j; m_i) - correct(x'_j; ~m_i)    of the trained label (infl_soft likewise)
`seed` fixes the initialisation, the data order and the masks, so several seeds are independent runs (a
noise floor for src.compare); a `-m` sweep over seeds runs one job per seed, never packed.

Masks (nothing written: any example's mask is recomputed from (seed, domain, index) alone, `half_masks`, on the
training device; training keeps its examples' halves there as a table, network.py HALVES_TABLE_BYTES):
    splitmix64(z) = z += 0x9E3779B97F4A7C15; z = (z ^ z>>30) * 0xBF58476D1CE4E5B9;
                    z = (z ^ z>>27) * 0x94D049BB133111EB; z ^ z>>31                  (all mod 2^64)
    key(u) = splitmix64(splitmix64(splitmix64(splitmix64(splitmix64(seed) + domain) + index) + point) + u)
m at mask point `point` (width w) holds the units whose key is below the (w // 2)-th smallest (counting
from 0), i.e. exactly w // 2 units unless two 64-bit keys of one example collide (probability about
w^2 / 2^65); the complement holds the other w - w // 2. Domain 0 are training examples;
domain 1 gives every test example a half of its own, used only for the accuracy of half-networks. Kept
units are scaled by 1 / KEEP = 2 as in dropout with p = 0.5 (soskek/turnover_dropout), the same for a half
and its complement, so both sub-networks see inputs of the full network's scale.

Mask points (explicit wrappers; any other model is refused by `check_turnover_config`,
src/estimators/turnover/job.py):
- mlp (meminf_mlp), cnn_small (meminf_cnn_small): the output of every ReLU: each hidden Linear layer, each
  conv block's activation (channel masks, before its max-pool) and the head's hidden layer.
- timm ResNets (resnet18, resnet50, ...): the stem activation and every block's output (the residual stream,
  channel masks), and inside every block after the activation of each conv but the last, so no path from
  the input to the logits avoids the masks.
Then every weight, bias and BatchNorm affine parameter except the classifier's bias gets gradient from
example i only if it connects units of m_i (tests/test_turnover.py checks it on all three families).

What still leaks between the halves (the estimates are of a dropout sub-network, not of leave-one-out):
- indirectly through other examples: example j's half overlaps both m_i and ~m_i, so updates that i caused
  in m_i shape j's gradient on the units it shares with ~m_i; the complement never saw i, but it did not
  train independently of i;
- the classifier's bias is shared by all examples;
- BatchNorm (ResNets): batch statistics mix examples of both halves in a batch during training (a masked
  channel is zero for i but still in the batch mean and variance), and the running statistics used at
  evaluation average over all examples;
- weight decay and the optimizer's learning-rate schedule act on all weights each step alike: they carry
  no information about an example, but the halves are not two separately regularised models;
  trainer.gradient_clip_val (global norm) would couple the halves through the clipping factor.

Outputs (written atomically after everything is computed) in `estimator.out_dir`
(default <output_dir>/<name>/turnover/seed=<seed>/, which is also the job's directory for run.log): the
files of src.estimate that src.compare and the evaluation read, with the same keys and thresholds —
estimates.npz, memorization.csv, pairs.csv, summary.json (estimator "turnover", runs_used 1, ratio 1.0: it
trains on everything; src.compare never takes it as the noise floor of a subsampled sweep, the estimators
differ). With a single run there is no replicate: mem_se, mem_soft_se and pair_infl_se are NaN (a noise floor
comes from a second seed); n_in = n_out = 1; acc_in / acc_out are the correctness under m_i / ~m_i. Pairs: infl
>= theta_infl (hard, so infl = 1), mem >= theta_mem, same class.
topk_idx / topk_infl rank by infl_soft (the hard difference is -1, 0 or 1 and ties almost everywhere), ties
to the lower training index. No influence.npy.

Cost: training is one run on all n examples; memorization is 2 n masked forward passes; influence is
2 n_infl n_test (n_infl = all training examples, or `estimator.influence_cap` of them), done as passes of up
to `estimator.eval_rows` rows: a block of training examples' halves and complements times a batch of test
examples, the layers before the first mask point computed once per test batch and then repeated for every
mask. Wall and CPU times of the three stages are in summary.json (turnover.time_s).
"""
