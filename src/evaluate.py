"""Built-in evaluation of memorization and influence scores on a sweep: planted label noise, the linear
datamodeling score (LDS) and membership inference (LiRA): `python -m src.evaluate` (src/analyses/evaluation/).

    python -m src.evaluate <sweep dir> [--out DIR] [--parts noise,lds,mia]
        [--holdout-seeds a..b[,c..d] | --holdout-sweep DIR] [--estimates DIR ...] [--infl FILE.npy ...]
        [--lira-variance auto|global|per-example] [--dense-cap-mb 512] [--removal DIR]

The sweep is read like `python -m src.estimate --strict` does (a damaged or foreign record, e.g. a mixed
sweep, is one `error:` line, exit 2), then the records of the runs it uses are read a second time to get
the per-run probabilities (SweepStats keeps only sums). Runs are split by seed into held-out runs
(`--holdout-seeds`, default the last 10% of the seeds, at least 2) and fit runs (all others); fewer than 2
on either side is an error. Or `--holdout-sweep DIR` (not with --holdout-seeds): every run of the sweep is a fit
run and every run of DIR, read the same way, a held-out run; DIR must hold the sweep's experiment apart from
`subset.repeats` (e.g. `-m seed=3000..3099 subset.repeats=2 name=...`), else one `error:` line names what
differs (fit → held out). The held-out runs never enter an estimate that LDS or the attack uses, and none may
train a subset that a fit run trained (the seed its subset was drawn with, src/data/subsets.py: e.g. seed 5 of a
repeats=2 sweep held out while seed 4 fits): an error, since the estimate would have seen that subset.

noise: planted-noise AUROC (needs records with flipped labels; skipped with a note otherwise). For every
  score, the AUROC of flipped (positive) against clean training examples: the Mann-Whitney statistic with
  midranks, so ties count 1/2; examples with a NaN score are left out and counted per class. Scores: mem
  and mem_soft estimated from all runs of the sweep (source `sweep`), and every float (n_train,) array of
  each `--estimates DIR` (its estimates.npz: mem, mem_soft, acc_in, proxy_*, ...; `*_se` columns are not
  scores). A score ranks flipped examples high when its AUROC is above 0.5; 1 - AUROC is the AUROC of its
  negation (learning speed or margin flag flipped examples by low values). An estimates file whose
  `flipped` column disagrees with the sweep is an error.
lds: the influence matrix estimated from the fit runs (src.estimate, hard correctness; n_train x n_test
  float32, refused above --dense-cap-mb), named `estimate`, and each `--infl FILE.npy` of that shape, named by
  its file stem. For held-out run k and
  test example j: predicted(k, j) = sum of infl(i, j) over the i in run k's subset (a NaN influence, i.e.
  an example the fit runs never left out or never included, counts as 0), actual(k, j) = the run's
  probability of the test label (test_prob). LDS_j = Spearman (Pearson of midranks) over the held-out runs
  of predicted vs actual; NaN where either side is constant (e.g. an all-zero matrix), left out of the mean
  and counted. Reported: mean with a normal 95% CI (mean +- 1.96 sd / sqrt(m) over the m test examples
  with an LDS) and the median. The target is the probability only: LDS_j ranks the runs of one test
  example, so logit(p) or any other increasing function of p gives the same LDS to the bit, and the
  margin (logit of y minus the largest other logit) needs logits, which records do not hold.
  Noise ceiling (`ceiling`, when at least 3 held-out subsets were each trained by 2 or more runs, e.g. by
  `--holdout-sweep` of a `subset.repeats=2` sweep): part of a held-out model's output is training noise
  (initialisation, data order) that nothing seen from its subset can predict. Runs are grouped by the seed their
  subset was drawn with; each repeated subset contributes its first R runs by seed, R the fewest among them.
  Repeat agreement r_j = Spearman over the subsets between the test_prob of two runs of one subset, averaged
  over every pair of the R runs (NaN where a side is constant). If output = f(subset) + independent noise,
  no predictor of the subset alone correlates with one model's output better than sqrt(r_j) (the correlation
  of f with the output, r_j being the share of its variance that f explains): ceiling_j = sqrt(max(r_j, 0)).
  This is exact for Pearson correlations; with Spearman on both sides it stays a bound for Gaussian outputs,
  at most 0.007 above the best predictor's Spearman (tests/test_lds_ceiling.py). Per matrix, on the grouped
  runs and the test examples where both its LDS and r_j are defined (`examples`, the others counted in
  `examples_left_out`): mean LDS, mean r_j, mean ceiling and LDS / ceiling
  (the ratio of those means), each with `ci95` (normal over the test examples, as above) and `ci95_subsets`
  (the estimate +- 1.96 sd of it over BOOTSTRAP_REPLICATES resamples of the held-out subsets with their runs,
  src/analyses/evaluation/lds.py: the subsets are shared by every test example, so this is the honest one;
  the ratio has only this one); `sqrt_mean_agreement` = sqrt(mean r_j), which a noisy r_j near 0 biases less.
  `agreement_all` and `ceiling_all`: over every test example with a defined r_j. lds.csv gains the columns
  repeat_agreement and ceiling, lds.png the ceiling's histogram, the summary line the ceiling and the agreement
  (on the first matrix's examples) and each LDS / ceiling, with their ci95_subsets.
mia: LiRA (Carlini et al. 2022) with the fit runs as shadow models and each held-out run as a target.
  phi = log(p / (1 - p)) of train_prob, p clipped to [1e-6, 1 - 1e-6]. Per training example, Gaussians
  are fitted to phi over the shadow runs that included it (in) and left it out (out). Variance `global`:
  one pooled within-example variance per side (sum of squared deviations from each example's own mean
  over sum of (n - 1)); `per-example`: each example's sample variance, floored at PHI_VARIANCE_FLOOR;
  `auto` (default): per-example from PER_EXAMPLE_MIN_SHADOW shadow runs on, global below. Scores for
  target run k and example i, label = i in run k's subset: online = log N(phi; mu_in, var_in) -
  log N(phi; mu_out, var_out); offline = (phi - mu_out) / sd_out (one-sided, larger = member; the same
  ranking as Carlini's offline p-value); baseline = phi itself (a confidence/loss threshold, Yeom et al.
  2018: -loss = log p ranks like phi). All (k, i) pooled: AUC (Mann-Whitney, as above), TPR at 1% FPR and
  at 0.1% FPR where the non-members allow at least MIN_FALSE_POSITIVES false positives there (TPR at FPR a:
  the largest TPR over thresholds whose FPR <= a). NaN scores (an example with no shadow run on a side, or
  a side with fewer than 2 runs under per-example variance) are left out and counted. Vulnerability of i:
  its mean online score over the held-out runs that included it; its Spearman with mem of the fit runs.
removal (--removal DIR or removal.csv): the summary of a removal experiment (python -m src.removal), through
  src.removal's read_removal_csv and summarize, copied into evaluation.json.

Outputs (in --out, default <sweep dir>/evaluation/), all computed before any is written, each atomically:
evaluation.json (summary; `holdout_sweep` and `runs` = fit + held out with --holdout-sweep), noise_auroc.csv
(source, score, auroc, counts), lds.csv (test index, label, one LDS column per matrix, with a ceiling the
repeat agreement and ceiling; NaN empty), lds.png, mia_roc.csv (attack, fpr, tpr; collinear points dropped),
mia_roc.png, mia_examples.csv (per training example: mem of the fit runs, held-out runs with it in,
vulnerability, mu/var in and out), and estimates_without_holdout/ (src.estimate's outputs for the fit runs,
influence.npy included). One line summarizes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.analyses.evaluation.evaluate import PARTS, evaluate, one_line, write_evaluation
from src.estimators.subsample.memorization import EstimateConfig
from src.util.cli import cli_main, command_parser


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = command_parser("python -m src.evaluate", __doc__)
    parser.add_argument("sweep_dir", type=Path, help="directory holding seed=<k>/record.npz")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default <sweep dir>/evaluation)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--holdout-seeds", default=None,
                        help="held-out seeds, e.g. 56..63 (default: the last 10%%, at least 2)")
    parser.add_argument("--holdout-sweep", type=Path, default=None,
                        help="held-out runs from this sweep (the same experiment apart from subset.repeats; "
                             "repeated subsets give the LDS noise ceiling); every run of sweep_dir is then a fit run")
    parser.add_argument("--estimates", type=Path, action="append", default=[],
                        help="estimates dir whose per-example columns get a noise AUROC (repeatable)")
    parser.add_argument("--infl", type=Path, action="append", default=[],
                        help="(n_train, n_test) influence .npy to score by LDS as well (repeatable)")
    parser.add_argument("--lira-variance", choices=("auto", "global", "per-example"), default="auto",
                        help="LiRA's Gaussians: one pooled variance per side, or each example's own (auto: "
                             "per-example from enough shadow runs on)")
    parser.add_argument("--dense-cap-mb", type=float, default=EstimateConfig.dense_cap_mb,
                        help="largest influence matrix held in memory")
    parser.add_argument("--removal", type=Path, default=None,
                        help="removal experiment dir (python -m src.removal --out) or its removal.csv")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    out_dir = args.out if args.out is not None else args.sweep_dir / "evaluation"
    evaluation = evaluate(args, out_dir)
    written = write_evaluation(out_dir, evaluation)
    print(one_line(evaluation.summary))
    print(f"wrote {len(written)} files to {out_dir}")


def main(argv: list[str] | None = None) -> int:
    return cli_main(_parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
