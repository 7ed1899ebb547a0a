//! The objective: one value for every variant of SimSiam's loss and of Zhang et al.'s gradient
//! analysis. SimSiam (eq. 4) is the default: `L = ½ D(p1, sg(z2)) + ½ D(p2, sg(z1))`,
//! `D(p, z) = -cos(p, z)` averaged over the batch.
//!
//! In general, for a pair of views (a, b): the online vector X (P_a or Z_a) is pulled towards a
//! target G built from normalised vectors and detached (`stop_grad`); `form` decides whether
//! the loss is `-X . G` (the negative gradient on X is then exactly G) or `-cos(X, G)`.
use crate::config::{Form, ObjectiveConfig, Online, Similarity, Symmetry, Target};
use crate::model::SiameseOutput;
use crate::monitor::l2_normalize;
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

/// Batch mean `[1, d]`.
fn centre(x: &Tensor) -> Tensor {
    x.mean_dim(&[0i64][..], true, x.kind())
}

#[derive(Debug, Clone)]
pub struct Objective {
    pub cfg: ObjectiveConfig,
}

impl Objective {
    pub fn new(cfg: &ObjectiveConfig) -> Objective {
        Objective { cfg: cfg.clone() }
    }

    fn sg(&self, t: Tensor) -> Tensor {
        if self.cfg.stop_grad {
            stop_grad(&t)
        } else {
            t
        }
    }

    /// The target G for online view a and target view b, from normalised Z and P `[B, d]`.
    pub fn target(&self, za: &Tensor, zb: &Tensor, pb: &Tensor) -> Tensor {
        let o_z = || centre(zb);
        let o_p = || centre(pb);
        // Z_n: a negative for each image, the next image of the batch.
        let z_n = || zb.roll([1], [0]);
        let g = match self.cfg.target {
            Target::Zb => zb.shallow_clone(),
            Target::Pb => pb.shallow_clone(),
            Target::PbPlusOe => pb + o_z() - o_p(),
            Target::PbPlusRe => zb - o_z() + o_p(),
            Target::ZbMinusZn => zb - z_n(),
            Target::ZbMinusOz => zb - o_z(),
            Target::ZbMinusRn => zb - (z_n() - o_z()),
            Target::Oz => centre(za).expand_as(za),
            Target::Ra => za - centre(za),
        };
        self.sg(g)
    }

    /// The loss of one direction (online view a, target view b).
    fn directed(&self, za: &Tensor, pa: &Tensor, zb: &Tensor, pb: &Tensor) -> Tensor {
        if self.cfg.similarity == Similarity::CrossEntropy {
            // On the raw vectors (softmax over channels), SimSiam §4.5.
            let x = match self.cfg.online {
                Online::P => pa,
                Online::Z => za,
            };
            return negative_similarity(x, &self.sg(zb.shallow_clone()), Similarity::CrossEntropy);
        }
        let (nza, nzb, npb) = (l2_normalize(za), l2_normalize(zb), l2_normalize(pb));
        let x = match self.cfg.online {
            Online::P => l2_normalize(pa),
            Online::Z => nza.shallow_clone(),
        };
        let g = self.target(&nza, &nzb, &npb);
        match self.cfg.form {
            Form::Dot => -(&x * g).sum_dim_intlist(&[1i64][..], false, x.kind()).mean(x.kind()),
            Form::Cosine => negative_similarity(&x, &g, Similarity::Cosine),
        }
    }

    /// The scalar training loss (minimum -1 for SimSiam's cosine form).
    pub fn loss(&self, out: &SiameseOutput) -> Tensor {
        let forward = self.directed(&out.z1, &out.p1, &out.z2, &out.p2);
        match self.cfg.symmetry {
            Symmetry::Symmetric => (forward + self.directed(&out.z2, &out.p2, &out.z1, &out.p1)) * 0.5,
            Symmetry::Asymmetric => forward,
        }
    }

    /// The loss's minimum where collapse sits (-1) for SimSiam-like targets in cosine form;
    /// none for the variants whose minimum depends on the batch.
    pub fn minimum(&self) -> Option<f64> {
        let unit_target = matches!(self.cfg.target, Target::Zb | Target::Pb);
        (self.cfg.similarity == Similarity::Cosine && (unit_target || self.cfg.form == Form::Cosine)).then_some(-1.0)
    }
}
