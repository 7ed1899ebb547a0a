"""Our kNN evaluator against the reference's, on the same weights. Loads a `simsiam` run's
latest `model.safetensors` into `simsiam_torch.py`'s model (lightly's ResNet with the stem's
ReLU) and computes the weighted kNN top-1 (k 200, t 0.1) with the reference's own `features`
(PIL -> to_tensor -> Normalize with the run's `augment.mean` / `augment.std`, eval-mode BN,
l2-normalised backbone features) and `knn_top1`. Compare with `simsiam eval knn RUN --k 200`.
Not part of the tool or its tests (see BENCHMARKS.md for the environment).

    python scripts/reference/knn_check.py runs/x --data .../train.tar.gz --test-data .../test.tar.gz
"""

import argparse
import json
import pathlib
import tomllib

import torchvision

from simsiam_torch import SimSiam, features, knn_top1, load_tar
from views_compare import load_ours_into


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", help="a simsiam run folder (config.toml, checkpoints/latest)")
    ap.add_argument("--data", required=True, help="the kNN bank: the run's training data (a tar of class folders)")
    ap.add_argument("--test-data", required=True)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--t", type=float, default=0.1)
    a = ap.parse_args()
    run = pathlib.Path(a.run)
    cfg = tomllib.loads((run / "config.toml").read_text())
    model_cfg = cfg["model"]
    assert model_cfg.get("stem_relu", True), "load_ours_into maps a backbone with the stem's ReLU"
    assert model_cfg.get("cifar_stem", True) and model_cfg.get("arch", "resnet18") == "resnet18"
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    model = SimSiam("lightly", False, model_cfg["width"], stem_relu=True)
    load_ours_into(model, ckpt / "model.safetensors")
    norm = torchvision.transforms.Normalize(cfg["augment"]["mean"], cfg["augment"]["std"])
    bank, bank_labels = load_tar(a.data, 0)
    test, test_labels = load_tar(a.test_data, 0)
    acc = knn_top1(
        features(model, bank, norm),
        bank_labels,
        features(model, test, norm),
        test_labels,
        k=a.k,
        t=a.t,
        classes=int(bank_labels.max()) + 1,
    )
    print(json.dumps({"run": str(run), "checkpoint": ckpt.name, "k": a.k, "t": a.t, "knn_top1": acc}))


if __name__ == "__main__":
    main()
