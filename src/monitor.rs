//! Collapse monitors (SimSiam §4.1 / Fig. 2).
use tch::{Kind, Tensor};

/// `collapse_std`: the per-channel std (unbiased, over the batch) of the l2-normalised
/// projection `z / ||z||`, averaged over the d channels. 0 for a collapsed batch; about
/// `1/sqrt(d)` for `z ~ N(0, I)`. Same as lightly's `std_of_l2_normalized`. `[B, d] -> scalar`.
pub fn collapse_std(z: &Tensor) -> Tensor {
    collapse_std_of_unit(&l2_normalize(&z.detach().to_kind(Kind::Float)))
}

/// [`collapse_std`] of rows already l2-normalised.
pub fn collapse_std_of_unit(zn: &Tensor) -> Tensor {
    zn.std_dim(&[0i64][..], true, false).mean(Kind::Float)
}

/// Row-wise `x / max(||x||, 1e-12)` (F.normalize).
pub fn l2_normalize(x: &Tensor) -> Tensor {
    let n = x.norm_scalaropt_dim(2.0, &[1i64][..], true).clamp_min(1e-12);
    x / n
}

/// The verdict of SimSiam's footnote 4: chance accuracy alone is not collapse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollapseVerdict {
    /// Loss at its minimum and `sqrt(d) * collapse_std` near 0, brought there by training.
    Collapsed,
    /// `sqrt(d) * collapse_std` below 0.5 without being a collapse: a narrow cone that training
    /// did not bring about (heads without BN start in one: their ReLU features have a positive
    /// mean that nothing centres), or a narrowing on its way whose loss is not yet at the
    /// minimum.
    Narrow,
    /// Not collapsed, but the loss stayed far from its minimum.
    NotConverged,
    Healthy,
    /// The loss became NaN or infinite and training stopped there: judged neither collapsed
    /// nor converged (an experiment records it for the arm and trains the others).
    Diverged,
}

/// Classifies a run's end state from its loss and `sqrt(d) * collapse_std` (use means over
/// the last steps: single steps oscillate), and that spread at the first step (`start_std`;
/// `None` where unknown). Since `sum_j var_j = 1 - m_o^2` for unit vectors,
/// `sqrt(d) * collapse_std` is about `sqrt(1 - m_o^2)`: below 0.5 means `m_o` above 0.87, the
/// embeddings in a narrow cone around their mean (Zhang et al.'s "m_o >> m_r"). Healthy
/// SimSiam sits near 1. Complete collapse (std 0) needs the pre-BN features to be exactly
/// constant, which the projector's output BN resists, so short runs stop short of it.
///
/// Collapsed: the loss within 0.1 of its minimum and the spread below 0.5 and below half its
/// value at the start. Collapse is something training does: a head with output BN starts near
/// 1, where this is the plain 0.5 threshold, but heads without BN start in a cone already
/// (0.40 for SimSiam Table 3a's no-BN heads at initialisation, `docs/results/cpu-small-nobn`),
/// and there the spread must have halved. Not converged: the loss stays more than 0.7 above
/// its minimum (e.g. above -0.3 for SimSiam's -1), as for a fixed random predictor (Table 1b).
/// Narrow: otherwise, the spread below 0.5, whatever the loss (a no-BN head's straddles any
/// band around -0.9). Healthy: the spread at 0.5 or above, the loss not more than 0.7 above
/// its minimum. Without a start, collapse is judged by the plain thresholds. The loss bands are
/// for one unit cosine loss: [`crate::objective::Objective::verdict`] scales a total of several.
pub fn verdict(final_loss: f64, loss_min: Option<f64>, scaled_std: f64, start_std: Option<f64>) -> CollapseVerdict {
    let at_min = loss_min.is_none_or(|m| final_loss - m < 0.1);
    let low = scaled_std < 0.5;
    let halved = start_std.is_none_or(|s| scaled_std < 0.5 * s);
    if low && halved && at_min {
        CollapseVerdict::Collapsed
    } else if loss_min.is_some_and(|m| final_loss - m > 0.7) {
        CollapseVerdict::NotConverged
    } else if low {
        CollapseVerdict::Narrow
    } else {
        CollapseVerdict::Healthy
    }
}
