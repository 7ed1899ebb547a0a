//! The weighted kNN classifier on a hand-made case, and against a direct per-query form.
use simsiam::eval::knn::knn_predict;
use tch::{Device, Kind, Tensor};

#[test]
fn weighted_knn_on_a_hand_made_case() {
    // Bank on the unit circle at angles 0, 10, 20 degrees (class 0) and 90, 100 (class 1).
    let deg = |a: f64| [a.to_radians().cos() as f32, a.to_radians().sin() as f32];
    let bank: Vec<f32> = [0.0, 10.0, 20.0, 90.0, 100.0].iter().flat_map(|&a| deg(a)).collect();
    let bank = Tensor::from_slice(&bank).view([5, 2]);
    let labels = Tensor::from_slice(&[0i64, 0, 0, 1, 1]);
    // Query at 75 degrees. k = 1: nearest is 90 (class 1).
    // k = 5, t = 1: class 0 weight e^cos75 + e^cos65 + e^cos55 = 1.296 + 1.526 + 1.774 = 4.596;
    // class 1: e^cos15 + e^cos25 = 2.627 + 2.474 = 5.101 -> class 1.
    // k = 5, t = 10 (flatter weights): class 0 wins by count (3 vs 2).
    let q = Tensor::from_slice(&deg(75.0)).view([1, 2]);
    let p = knn_predict(&q, &bank, &labels, 2, &[1, 5], 1.0);
    assert_eq!(p[0].int64_value(&[0]), 1);
    assert_eq!(p[1].int64_value(&[0]), 1);
    let p = knn_predict(&q, &bank, &labels, 2, &[5], 10.0);
    assert_eq!(p[0].int64_value(&[0]), 0);
    // k = 3 at 50 degrees: neighbours 20 (c0), 90 (c1), 10 (c0) -> class 0.
    let q = Tensor::from_slice(&deg(50.0)).view([1, 2]);
    assert_eq!(knn_predict(&q, &bank, &labels, 2, &[3], 0.1)[0].int64_value(&[0]), 0);
}

/// Random features, 40 classes: the chunked, scattered scores give the classes that the
/// direct form gives (each query: its top k by similarity, `exp(s / t)` summed per class in
/// f64, the largest wins), for several k at once.
#[test]
fn knn_matches_the_direct_form_on_random_features() {
    tch::manual_seed(5);
    let norm = |x: Tensor| {
        let n = x.norm_scalaropt_dim(2, [1i64].as_slice(), true);
        x / n
    };
    let (n, m, c, classes) = (3000i64, 300i64, 16i64, 40i64);
    let bank = norm(Tensor::randn([n, c], (Kind::Float, Device::Cpu)));
    let query = norm(Tensor::randn([m, c], (Kind::Float, Device::Cpu)));
    let labels = Tensor::randint(classes, [n], (Kind::Int64, Device::Cpu));
    let ks = [1usize, 20, 200];
    let got = knn_predict(&query, &bank, &labels, classes, &ks, 0.1);
    let sim = Vec::<Vec<f32>>::try_from(query.matmul(&bank.tr())).unwrap();
    let lbl = Vec::<i64>::try_from(&labels).unwrap();
    for (j, &k) in ks.iter().enumerate() {
        let pred = Vec::<i64>::try_from(&got[j]).unwrap();
        for (i, row) in sim.iter().enumerate() {
            let mut order: Vec<usize> = (0..n as usize).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
            let mut score = vec![0f64; classes as usize];
            for &nb in &order[..k] {
                score[lbl[nb] as usize] += (row[nb] as f64 / 0.1).exp();
            }
            let best = (0..classes as usize).max_by(|&a, &b| score[a].total_cmp(&score[b])).unwrap();
            assert_eq!(pred[i], best as i64, "k {k}, query {i}: scores {score:?}");
        }
    }
}
