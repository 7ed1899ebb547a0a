//! The weighted kNN classifier on a hand-made case.
use simsiam::eval::knn::knn_predict;
use tch::Tensor;

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
