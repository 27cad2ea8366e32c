r"""ECOS adaptive model compression on the embedded digits + MNIST-C domains.

Every domain in turn plays the client. The cloud trains a teacher (`teacher.model`)
on its whole labelled pool, then distils it into a small student (`train.model`) using only
the teacher's logits on the `budget` pool samples each method picks (ECOS, Random, K-Center and
the in-domain oracle); the student is scored on the client's held-out test split. Data,
features, ECOS and student-training settings are those of configs/selective_labeling.py.

Run (from the repository root):

  python experiments/model_compression.py --workdir=runs/model_compression
  python experiments/model_compression.py --config=configs/model_compression.py:quick --workdir=runs/mc_quick
  # any field overrides:
  python experiments/model_compression.py --config.compression.temperature=2.0 --config.budgets='(300,600)'

Measured (one run of the default config, 2-core CPU shared with other jobs, load 4-8):
`time python experiments/model_compression.py --workdir=runs/model_compression` took 13 min 23 s
wall (10 min 31 s user; 7 client domains x 3 seeds x 2 budgets x 4 methods = 168 students, 7
wide_cnn teachers of 10 epochs trained on the way; feature extractors of 4 domains were already
cached, the other 3 were trained; the teachers took 12-36 s each, 2 min 37 s in all).
`quick` (2 domains x 2 seeds, 80 steps, 3 teacher epochs) took 2 min 36 s.

Teacher (wide_cnn on the whole pool) accuracy on the client test splits: 73.3 (mnist_rotate)
to 98.7 (digits), 90.9 on average. Student (cnn, T = 4, alpha = 0, 300 steps) accuracy %,
mean ± std over 3 seeds, ECOS at ε = 0.58, δ = 1e-5:

| budget | method | digits | mnist | rotate | invert | noise | blur | texture | Avg |
|---|---|---|---|---|---|---|---|---|---|
| 200 | ecos    | 89.0 ± 4.8 | 73.8 ± 1.7 | 49.4 ± 6.3 | 68.2 ± 4.3 | 74.1 ± 1.5 | 84.8 ± 0.9 | 73.0 ± 0.3 | 73.2 ± 0.5 |
| 200 | random  | 89.7 ± 1.0 | 73.2 ± 4.3 | 33.4 ± 2.5 | 15.0 ± 8.2 | 74.0 ± 1.9 | 72.1 ± 2.0 | 62.7 ± 1.2 | 60.0 ± 2.5 |
| 200 | kcenter | 75.0 ± 3.2 | 75.3 ± 3.1 | 47.1 ± 4.0 |  7.1 ± 3.0 | 71.8 ± 1.9 | 80.6 ± 4.3 | 66.1 ± 2.5 | 60.4 ± 1.2 |
| 200 | oracle  | 95.3 ± 0.5 | 82.9 ± 1.0 | 66.8 ± 0.8 | 84.1 ± 0.4 | 79.3 ± 1.0 | 87.3 ± 0.9 | 75.6 ± 2.2 | 81.6 ± 0.0 |
| 400 | ecos    | 94.0 ± 0.5 | 81.6 ± 2.3 | 58.2 ± 1.5 | 72.8 ± 1.2 | 80.0 ± 3.0 | 88.9 ± 0.4 | 79.3 ± 2.0 | 79.3 ± 0.8 |
| 400 | random  | 92.2 ± 0.8 | 82.7 ± 2.1 | 39.9 ± 0.2 | 37.3 ± 4.2 | 80.9 ± 2.9 | 83.1 ± 0.9 | 68.4 ± 1.9 | 69.2 ± 0.2 |
| 400 | kcenter | 84.9 ± 2.6 | 82.2 ± 2.2 | 50.9 ± 0.8 |  4.4 ± 1.2 | 78.6 ± 2.3 | 83.6 ± 0.4 | 74.2 ± 2.7 | 65.5 ± 1.6 |
| 400 | oracle  | 96.4 ± 0.6 | 87.6 ± 1.1 | 73.1 ± 0.6 | 87.2 ± 1.1 | 82.8 ± 1.0 | 89.0 ± 1.4 | 79.6 ± 1.0 | 85.1 ± 0.8 |

Against the seed's claim (ECOS ≥ Random > K-Center at both budgets, on the average): ECOS beats
Random by 13.2 / 10.1 points and K-Center by 12.8 / 13.8. Random > K-Center holds at 400
(69.2 vs 65.5) but not at 200 (60.0 vs 60.4, within the seeds' spread); both margins come from
mnist_invert alone: without it K-Center beats Random at both budgets (69.3 vs 67.5, 75.7 vs
74.5). ECOS put 44% of its picks in the client's domain (which is ~7% of the pool).
Student-teacher agreement on the client test split: ECOS 75.3 / 82.0, Random 62.4 / 72.2,
K-Center 62.5 / 68.4, oracle 83.6 / 87.2 %. Nothing was tuned on the test split (T = 4 is the
usual distillation default).
"""

import ml_collections
from ml_collections import config_dict

from configs import base, selective_labeling


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    c = selective_labeling.get_config(arg)
    with c.unlocked():
        del c["semi"]  # the student learns from the teacher's logits on the picks only
        # The image statistics were validated for selective labelling only; this application
        # keeps the autoencoder code alone until they are compared on its own validation data.
        c.features.stats_weight = 0.0
        c.methods = ("ecos", "random", "kcenter", "oracle")  # no 'local': client data never reach the cloud

        # The large model, trained on the whole labelled pool (the student is `train`).
        c.teacher = base.train(model="wide_cnn", batch_size=128, learning_rate=1e-3, epochs=10,
                               cache_dir=config_dict.placeholder(str))  # default: <data cache>/teachers
        c.compression = ml_collections.ConfigDict()
        c.compression.temperature = 4.0            # softmax temperature of the KL (loss scaled by T²)
        c.compression.alpha = 0.0                  # weight of hard-label CE on the picks' pool labels

        if arg == "quick":
            c.teacher.epochs = 3
    c.lock()
    return c
