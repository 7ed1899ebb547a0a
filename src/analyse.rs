//! `simsiam analyse`: the blog's hypotheses measured on a checkpoint (EXPERIMENTS.md §3,
//! B1-B5). Every analysis draws `k` training-augmentation views per image to estimate the
//! instance centres f_bar (eval-mode BN unless `train_bn`), and fresh held-out views as queries.
use crate::analysis::{covariance_spectrum, cumulative_variance, spectrum};
use crate::augment::Augmenter;
use crate::config::AugmentConfig;
use crate::instances::{
    between_fraction, centres, instance_id, kappa_hat, oracle_predictor, posterior_shared, resultant_unbiased, two_nn,
};
use crate::model::SimSiam;
use crate::monitor::l2_normalize;
use serde_json::{json, Value};
use tch::nn::ModuleT;
use tch::{Kind, Tensor};

/// What every analysis needs: the model, the images `[N,H,W,3]` on its device, the training
/// augmentation.
pub struct Probe<'a> {
    pub model: &'a SimSiam,
    pub images: Tensor,
    pub aug: &'a Augmenter,
    pub aug_cfg: &'a AugmentConfig,
    pub image_size: usize,
    /// Views per image for the centres.
    pub k: usize,
    pub train_bn: bool,
}

const BATCH: i64 = 500;

fn mean(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}

impl Probe<'_> {
    /// One fresh augmented view's (z, y) per image, BN in the probe's mode.
    fn view(&self) -> (Tensor, Tensor) {
        tch::no_grad(|| {
            let n = self.images.size()[0];
            let (mut zs, mut ys) = (Vec::new(), Vec::new());
            for s in (0..n).step_by(BATCH as usize) {
                let x = self.aug.view(&self.images.narrow(0, s, BATCH.min(n - s)));
                let y = self.model.features(&x, self.train_bn);
                zs.push(y.apply_t(&self.model.projector, self.train_bn).to_kind(Kind::Float));
                ys.push(y.to_kind(Kind::Float));
            }
            (Tensor::cat(&zs, 0), Tensor::cat(&ys, 0))
        })
    }

    fn centres(&self) -> (Tensor, Tensor) {
        centres(self.model, &self.images, self.aug, self.k, self.train_bn, BATCH)
    }

    /// The shared concentration that maximises the held-out log-likelihood of the true instance.
    fn fit_kappa(&self, mu: &Tensor, z: &Tensor, truth: &Tensor) -> f64 {
        (0..=40)
            .map(|i| 10f64.powf(i as f64 / 10.0)) // 1 .. 10^4
            .map(|k| {
                (k, mean(&posterior_shared(z, mu, k).gather(1, &truth.unsqueeze(1), false).clamp_min(1e-30).log()))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("grid")
            .0
    }

    /// B4: spectral measures and TwoNN of z, y and the centres.
    pub fn dimension(&self) -> Value {
        let (z, y) = self.view();
        let (f_bar, _) = self.centres();
        let describe = |x: &Tensor| {
            let cumulative = cumulative_variance(&covariance_spectrum(x));
            json!({"spectrum": spectrum(x), "two_nn": two_nn(x), "cumulative_variance": cumulative})
        };
        json!({"z": describe(&z), "y": describe(&y), "centres": describe(&l2_normalize(&f_bar)), "n": z.size()[0], "k": self.k})
    }

    /// B2: instance identification from one fresh view, against N instances, for each N.
    pub fn instances(&self, sizes: &[usize]) -> Value {
        let (f_bar, r) = self.centres();
        let mu = l2_normalize(&f_bar);
        let (z_fit, _) = self.view();
        let (z, _) = self.view();
        let n = mu.size()[0];
        let rows: Vec<Value> = sizes
            .iter()
            .map(|&s| s as i64)
            .filter(|&s| s <= n)
            .map(|s| {
                let m = mu.narrow(0, 0, s);
                let truth = Tensor::arange(s, (Kind::Int64, mu.device()));
                let kappa = self.fit_kappa(&m, &z_fit.narrow(0, 0, s), &truth);
                let q = z.narrow(0, 0, s);
                let post = posterior_shared(&q, &m, kappa);
                let id = instance_id(&post, &truth);
                json!({"instances": s, "kappa_shared": kappa, "id": id, "between_fraction": between_fraction(&post, &m, &q)})
            })
            .collect();
        let d = mu.size()[1] as usize;
        let r_unb: Vec<f64> = Vec::<f64>::try_from(r.to_kind(Kind::Double))
            .expect("f64")
            .iter()
            .map(|&x| resultant_unbiased(x, self.k))
            .collect();
        let kappas: Vec<f64> = r_unb.iter().map(|&x| kappa_hat(x, d)).collect();
        let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        json!({"by_size": rows, "mean_resultant": mean(&r), "mean_resultant_unbiased": avg(&r_unb), "kappa_per_instance_mean": avg(&kappas), "k": self.k})
    }

    /// B1: is the learned predictor close to the optimal one, h*(z) = sum p(x'|Z) f_bar(x')?
    pub fn predictor(&self) -> Value {
        let (f_bar, r) = self.centres();
        let mu = l2_normalize(&f_bar);
        let n = mu.size()[0];
        let truth = Tensor::arange(n, (Kind::Int64, mu.device()));
        let (z_fit, _) = self.view();
        let kappa = self.fit_kappa(&mu, &z_fit, &truth);
        let (z, _) = self.view();
        let (z2, _) = self.view();
        let h = tch::no_grad(|| self.model.predictor.forward_t(&z, false)).to_kind(Kind::Float);
        let h_star = oracle_predictor(&posterior_shared(&z, &mu, kappa), &f_bar);
        let o = mu.mean_dim(&[0i64][..], true, Kind::Float).expand_as(&h);
        let cos = |a: &Tensor, b: &Tensor| mean(&Tensor::cosine_similarity(a, b, 1, 1e-8));
        json!({
            "kappa_shared": kappa,
            "cos_h_hstar": cos(&h, &h_star),
            "cos_h_z": cos(&h, &z),
            "cos_h_centre_true": cos(&h, &f_bar),
            "cos_h_global_mean": cos(&h, &o),
            // E[cos(h(z1), z2)] vs its floor E[R_bar(x)] and what h* achieves.
            "achieved_similarity": cos(&h, &z2),
            "floor_similarity_mean_resultant": mean(&r),
            "hstar_similarity": mean(&(l2_normalize(&h_star) * &f_bar).sum_dim_intlist(&[1i64][..], false, Kind::Float)),
        })
    }

    /// B3: shard geometry from held-out views and the centres.
    pub fn shards(&self) -> Value {
        let (f_bar, _) = self.centres();
        let mu = l2_normalize(&f_bar);
        let n = mu.size()[0];
        let eye = Tensor::eye(n, (Kind::Bool, mu.device()));
        let (z, _) = self.view();
        let zn = l2_normalize(&z);
        let own = (&zn * &mu).sum_dim_intlist(&[1i64][..], false, Kind::Float); // Z . mu_x
        let radius = own.clamp(-1.0, 1.0).acos(); // per query, one view per instance
        let cc = mu.matmul(&mu.tr()).masked_fill(&eye, -2.0);
        let s_nn = cc.amax(&[1i64][..], false);
        let other = zn.matmul(&mu.tr()).masked_fill(&eye, -2.0).amax(&[1i64][..], false);
        let margin = &own - other;
        let overlap = s_nn.clamp(-1.0, 1.0).acos() / (&radius * 2.0).clamp_min(1e-6);
        // Wang & Isola uniformity of the centres: log E exp(-2 ||mu - mu'||^2) over pairs.
        let sq = (-(cc.masked_fill(&eye, 1.0)) + 1.0) * 2.0; // ||a-b||^2 = 2 - 2 a.b
        let unif = ((-&sq * 2.0).exp().masked_fill(&eye, 0.0).sum(Kind::Double) / (n * (n - 1)) as f64)
            .log()
            .double_value(&[]);
        json!({
            "radius_mean_rad": mean(&radius),
            "nearest_centre_similarity_mean": mean(&s_nn),
            "margin_mean": mean(&margin),
            "p_margin_positive": mean(&margin.gt(0.0)),
            "overlap_ratio_median": overlap.median().double_value(&[]),
            "separated_fraction": mean(&overlap.gt(1.0)),
            "centre_uniformity": unif,
        })
    }

    /// B5: invariance of Z and y: mean resultant length, variance ratio, alignment, and the mean
    /// resultant length under each augmentation family alone.
    pub fn invariance(&self) -> Value {
        let (_, r) = self.centres();
        let (z1, y1) = self.view();
        let (z2, y2) = self.view();
        // inv = 1 - tr(Sigma_within) / tr(Sigma_total), from two views per image.
        let ratio = |a: &Tensor, b: &Tensor| {
            let within = mean(&(a - b).square().sum_dim_intlist(&[1i64][..], false, Kind::Float)) / 2.0;
            let all = Tensor::cat(&[a, b], 0);
            let total = mean(&(&all - all.mean_dim(&[0i64][..], true, Kind::Float)).square().sum_dim_intlist(
                &[1i64][..],
                false,
                Kind::Float,
            ));
            1.0 - within / total
        };
        let (a, b) = (l2_normalize(&z1), l2_normalize(&z2));
        let alignment = mean(&(&a - &b).square().sum_dim_intlist(&[1i64][..], false, Kind::Float));
        let off = self.aug_cfg.identity();
        let base = self.aug_cfg;
        let families = [
            ("crop", AugmentConfig { crop_scale: base.crop_scale, crop_ratio: base.crop_ratio, ..off.clone() }),
            ("flip", AugmentConfig { flip_p: base.flip_p, ..off.clone() }),
            ("colour_jitter", AugmentConfig { jitter_p: 1.0, ..off.clone() }),
            // p = 0.5: a family whose outcome is fixed would give identical views.
            ("grayscale", AugmentConfig { grayscale_p: 0.5, ..off.clone() }),
            ("blur", AugmentConfig { blur_p: 0.5, ..off.clone() }),
        ];
        let device = self.images.device();
        let per_family: serde_json::Map<String, Value> = families
            .iter()
            .map(|(name, cfg)| {
                let aug = Augmenter::new(cfg, self.image_size, device);
                let (_, rf) = centres(self.model, &self.images, &aug, self.k, self.train_bn, BATCH);
                (name.to_string(), json!(mean(&rf)))
            })
            .collect();
        json!({
            "mean_resultant": mean(&r),
            "variance_ratio_z": ratio(&a, &b),
            "variance_ratio_y": ratio(&y1, &y2),
            "alignment": alignment,
            "mean_resultant_by_family": per_family,
        })
    }
}

/// The plots of an analysis (PNG and SVG in `dir`): B4's cumulative explained variance of z, y
/// and the instance centres against the number of components, and B2's instance-ID accuracy
/// against the number of instances. The other analyses are scalars (their JSON).
pub fn plots(dir: &std::path::Path, out: &serde_json::Map<String, Value>) -> crate::Result<Vec<std::path::PathBuf>> {
    use crate::report::{render, Figure};
    let mut figs = Vec::new();
    if let Some(d) = out.get("dimension") {
        let series = ["z", "y", "centres"]
            .iter()
            .map(|name| {
                let pts = d[name]["cumulative_variance"].as_array().into_iter().flatten();
                let pts = pts.enumerate().filter_map(|(i, v)| Some(((i + 1) as f64, v.as_f64()?))).collect();
                (name.to_string(), pts)
            })
            .collect();
        figs.push(Figure {
            stem: "dimension",
            title: "B4: cumulative explained variance",
            x_label: "components",
            series,
        });
    }
    if let Some(rows) = out.get("instances").and_then(|v| v["by_size"].as_array()) {
        let line = |key: &str| -> Vec<(f64, f64)> {
            rows.iter().filter_map(|r| Some((r["instances"].as_f64()?, r["id"][key].as_f64()?))).collect()
        };
        figs.push(Figure {
            stem: "instances",
            title: "B2: instance identification from one view",
            x_label: "instances N",
            series: vec![("top-1".into(), line("top1")), ("top-5".into(), line("top5"))],
        });
    }
    figs.iter()
        .map(|f| {
            render(dir, f)?;
            Ok(dir.join(format!("{}.png", f.stem)))
        })
        .collect()
}
