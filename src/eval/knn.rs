//! Weighted kNN classifier (InstDisc; the MoCo CIFAR demo's `knn_predict`): cosine similarity
//! of l2-normalised backbone features against a bank of training features, top-k neighbours
//! weighted by `exp(s / t)`, the class with the largest summed weight wins.
use crate::augment::Augmenter;
use crate::data::ImageStore;
use crate::model::SimSiam;
use crate::monitor::l2_normalize;
use tch::{Kind, Tensor};

/// l2-normalised backbone features of every image (eval-mode BN, no augmentation): `[N, C]`.
pub fn extract_features(model: &SimSiam, store: &ImageStore, aug: &Augmenter, batch: i64) -> Tensor {
    tch::no_grad(|| {
        let n = store.images.size()[0];
        // Seconds on CIFAR, minutes on ImageNet: a line every few minutes says how far it is.
        let progress = crate::progress::Progress::log_only(n as u64, "kNN features");
        let chunks: Vec<Tensor> = store
            .batches(batch)
            .map(|rows| {
                let x = aug.eval_view(&rows);
                let f = l2_normalize(&model.features(&x, false).to_kind(Kind::Float));
                progress.inc(x.size()[0] as u64);
                f
            })
            .collect();
        Tensor::cat(&chunks, 0)
    })
}

/// Predicted classes `[M]` for each k in `ks`, from queries `[M, C]` and a bank `[N, C]` (both
/// l2-normalised) with labels `[N]`. Queries go in chunks of at most 1,024 rows whose
/// similarities to the bank take at most 1 GiB (some 200 rows for ImageNet's 1.28 million
/// images; CIFAR's 50,000 take 1,024 rows, 0.2 GB), and each neighbour's weight is added
/// straight into its class's score (`[rows, classes]`, where the MoCo demo's one-hot
/// `[rows, k, classes]` takes k = 200 times that: 0.8 GB for 1,024 rows at ImageNet's 1,000
/// classes).
pub fn knn_predict(
    query: &Tensor,
    bank: &Tensor,
    bank_labels: &Tensor,
    classes: i64,
    ks: &[usize],
    t: f64,
) -> Vec<Tensor> {
    tch::no_grad(|| {
        let kmax = (*ks.iter().max().expect("at least one k") as i64).min(bank.size()[0]);
        let m = query.size()[0];
        let chunk = ((1i64 << 28) / bank.size()[0].max(1)).clamp(16, 1024);
        let mut preds: Vec<Vec<Tensor>> = ks.iter().map(|_| Vec::new()).collect();
        for s in (0..m).step_by(chunk as usize) {
            let q = query.narrow(0, s, chunk.min(m - s));
            let b = q.size()[0];
            // [b, N] similarities -> top kmax (sorted, descending)
            let (sim, idx) = q.matmul(&bank.tr()).topk(kmax, 1, true, true);
            let lbl = bank_labels.index_select(0, &idx.view([-1])).view([b, kmax]);
            let w = (sim / t).exp();
            for (j, &k) in ks.iter().enumerate() {
                let k = (k as i64).min(kmax);
                // scores[i, c] = sum of the weights of query i's first k neighbours of class c.
                let scores = Tensor::zeros([b, classes], (w.kind(), q.device())).scatter_add(
                    1,
                    &lbl.narrow(1, 0, k),
                    &w.narrow(1, 0, k),
                );
                preds[j].push(scores.argmax(1, false));
            }
        }
        preds.into_iter().map(|p| Tensor::cat(&p, 0)).collect()
    })
}

/// Top-1 accuracy (percent) of the kNN classifier for each k.
pub fn knn_accuracy(
    model: &SimSiam,
    train: &ImageStore,
    test: &ImageStore,
    aug: &Augmenter,
    ks: &[usize],
    t: f64,
) -> Vec<f64> {
    let bank = extract_features(model, train, aug, 512);
    let query = extract_features(model, test, aug, 512);
    knn_predict(&query, &bank, &train.labels, train.num_classes() as i64, ks, t)
        .iter()
        .map(|p| p.eq_tensor(&test.labels).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]) * 100.0)
        .collect()
}
