//! The objective, one value for every variant of SimSiam's loss (eq. 4 and its ablations):
//! `L = ½ D(p1, sg(z2)) + ½ D(p2, sg(z1))`, `D(p, z) = -cos(p, z)` averaged over the batch.
use crate::config::{ObjectiveConfig, Similarity, Symmetry};
use crate::model::SiameseOutput;
use tch::Tensor;

/// Stop-gradient: the target branch is a constant for this step.
pub fn stop_grad(t: &Tensor) -> Tensor {
    t.detach()
}

/// Per-sample similarity `[B, d] x [B, d] -> [B]`.
pub fn similarity(p: &Tensor, z: &Tensor, kind: Similarity) -> Tensor {
    match kind {
        // F.cosine_similarity(p, z, dim=1), eps 1e-8 as PyTorch.
        Similarity::Cosine => Tensor::cosine_similarity(p, z, 1, 1e-8),
        // softmax(z) . log softmax(p) over channels (SimSiam §4.5; no temperature).
        Similarity::CrossEntropy => {
            (z.softmax(1, z.kind()) * p.log_softmax(1, p.kind())).sum_dim_intlist(&[1i64][..], false, p.kind())
        }
    }
}

/// D(p, z): the negative similarity averaged over the batch (scalar).
pub fn negative_similarity(p: &Tensor, z: &Tensor, kind: Similarity) -> Tensor {
    -similarity(p, z, kind).mean(p.kind())
}

#[derive(Debug, Clone)]
pub struct Objective {
    pub cfg: ObjectiveConfig,
}

impl Objective {
    pub fn new(cfg: &ObjectiveConfig) -> Objective {
        Objective { cfg: cfg.clone() }
    }

    /// The target branch: `sg(z)` with stop-gradient on, `z` itself without (Fig. 2).
    fn target(&self, z: &Tensor) -> Tensor {
        if self.cfg.stop_grad {
            stop_grad(z)
        } else {
            z.shallow_clone()
        }
    }

    /// The scalar training loss (minimum -1 for the cosine similarity).
    pub fn loss(&self, out: &SiameseOutput) -> Tensor {
        let d = |p: &Tensor, z: &Tensor| negative_similarity(p, &self.target(z), self.cfg.similarity);
        match self.cfg.symmetry {
            Symmetry::Symmetric => (d(&out.p1, &out.z2) + d(&out.p2, &out.z1)) * 0.5,
            Symmetry::Asymmetric => d(&out.p1, &out.z2),
        }
    }

    /// The loss's minimum (where collapse sits): -1 for cosine; for cross-entropy it depends on
    /// the representation, so there is none to compare with.
    pub fn minimum(&self) -> Option<f64> {
        match self.cfg.similarity {
            Similarity::Cosine => Some(-1.0),
            Similarity::CrossEntropy => None,
        }
    }
}
