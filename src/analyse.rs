//! `simsiam analyse`: the blog's hypotheses measured on a checkpoint (EXPERIMENTS.md §3,
//! B1-B5). Every analysis draws `k` training-augmentation views per image to estimate the
//! instance centres f_bar (eval-mode BN unless `train_bn`), and fresh held-out views as queries.
use crate::analysis::{bootstrap_ci, cumulative_variance, linear_dims, spectrum_and_eigenvalues};
use crate::augment::Augmenter;
use crate::config::AugmentConfig;
use crate::instances::{
    between_fraction, centres, centres_of, instance_id, kappa_hat, mle_intrinsic_dim, oracle_predictor,
    posterior_kernel, posterior_per_instance, posterior_shared, resultant_unbiased, two_nn, view_bank,
};
use crate::model::SimSiam;
use crate::monitor::{collapse_std, l2_normalize};
use serde_json::{json, Value};
use std::cell::OnceCell;
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
    /// The instance centres and mean resultant lengths, estimated once and shared by the
    /// analyses (each drew its own K views of every image before: most of `all`'s time).
    centres: OnceCell<(Tensor, Tensor)>,
}

const BATCH: i64 = 500;
/// Bootstrap resamples for the linear dimension measures' intervals.
const BOOTSTRAP: usize = 20;
/// Neighbours of the Levina-Bickel intrinsic dimension.
const MLE_NEIGHBOURS: i64 = 20;

fn mean(t: &Tensor) -> f64 {
    t.to_kind(Kind::Double).mean(Kind::Double).double_value(&[])
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).expect("f64")
}

/// Quantiles of a tensor's values, keyed `q10`, `q50`, ...
fn quantiles(t: &Tensor, qs: &[f64]) -> Value {
    let v = t.to_kind(Kind::Double).flatten(0, -1);
    let map: serde_json::Map<String, Value> = qs
        .iter()
        .map(|&q| {
            (format!("q{}", (q * 100.0).round()), json!(v.quantile_scalar(q, None, false, "linear").double_value(&[])))
        })
        .collect();
    Value::Object(map)
}

/// The mean over instances of the bias-corrected mean resultant length R_inf (EXPERIMENTS.md
/// §3.1: `R^2 ~ R_inf^2 + (1 - R_inf^2) / K`).
fn mean_unbiased(r: &Tensor, k: usize) -> f64 {
    let v = to_vec(r);
    v.iter().map(|&x| resultant_unbiased(x, k)).sum::<f64>() / v.len().max(1) as f64
}

/// The concentration on a log grid (`per_decade` points per decade, 1 to 10^4) that maximises
/// the held-out log-likelihood of the true instance under `posterior(kappa)` `[M, N]`.
fn fit_kappa(per_decade: usize, truth: &Tensor, posterior: impl Fn(f64) -> Tensor) -> f64 {
    (0..=4 * per_decade)
        .map(|i| 10f64.powf(i as f64 / per_decade as f64))
        .map(|k| (k, mean(&posterior(k).gather(1, &truth.unsqueeze(1), false).clamp_min(1e-30).log())))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("grid")
        .0
}

/// Per-dimension moments of z and `sqrt(d) collapse_std` (B6/C6: at initialisation the BN'd
/// projector output should be about zero-mean, unit-variance, and spread).
fn moments(z: &Tensor) -> Value {
    let d = z.size()[1] as f64;
    json!({
        "dim_mean_abs": mean(&z.mean_dim(&[0i64][..], false, Kind::Float).abs()),
        "dim_std_mean": mean(&z.std_dim(&[0i64][..], true, false)),
        "sqrt_d_collapse_std": collapse_std(z).double_value(&[]) * d.sqrt(),
    })
}

/// Per-instance vMF concentrations (Banerjee's estimate) from the mean resultant lengths `r`
/// `[N]` of K views, bias-corrected for finite K, in dimension d.
fn vmf_kappas(r: &Tensor, k: usize, d: usize) -> Vec<f64> {
    to_vec(r).iter().map(|&x| kappa_hat(resultant_unbiased(x, k), d)).collect()
}

impl<'a> Probe<'a> {
    pub fn new(
        model: &'a SimSiam,
        images: Tensor,
        aug: &'a Augmenter,
        aug_cfg: &'a AugmentConfig,
        image_size: usize,
        k: usize,
        train_bn: bool,
    ) -> Probe<'a> {
        Probe { model, images, aug, aug_cfg, image_size, k, train_bn, centres: OnceCell::new() }
    }

    /// One fresh augmented view's (z, y) per image, BN in the probe's mode (`train` overrides it).
    fn view_in(&self, train: bool) -> (Tensor, Tensor) {
        tch::no_grad(|| {
            let n = self.images.size()[0];
            let (mut zs, mut ys) = (Vec::new(), Vec::new());
            for s in (0..n).step_by(BATCH as usize) {
                let x = self.aug.view(&self.images.narrow(0, s, BATCH.min(n - s)));
                let (y, z) = self.model.features_and_projection(&x, train);
                zs.push(z);
                ys.push(y);
            }
            (Tensor::cat(&zs, 0), Tensor::cat(&ys, 0))
        })
    }

    fn view(&self) -> (Tensor, Tensor) {
        self.view_in(self.train_bn)
    }

    /// `(f_bar [N, d], R_bar [N])` of [`centres`], drawn on first use.
    fn centres(&self) -> (Tensor, Tensor) {
        let (f_bar, r) =
            self.centres.get_or_init(|| centres(self.model, &self.images, self.aug, self.k, self.train_bn, BATCH));
        (f_bar.shallow_clone(), r.shallow_clone())
    }

    /// B4: spectral measures (with bootstrap intervals), TwoNN and Levina-Bickel of z, y and the
    /// centres; and z's per-dimension moments in train- and eval-mode BN (C6).
    pub fn dimension(&self) -> Value {
        let (z, y) = self.view();
        let (f_bar, _) = self.centres();
        let describe = |x: &Tensor| {
            let (spectrum, lambda) = spectrum_and_eigenvalues(x);
            let [erank, pr] = bootstrap_ci(x, BOOTSTRAP, linear_dims);
            json!({
                "spectrum": spectrum, "two_nn": two_nn(x), "mle_id": mle_intrinsic_dim(x, MLE_NEIGHBOURS),
                "bootstrap_95": {"effective_rank": erank, "participation_ratio": pr, "resamples": BOOTSTRAP},
                "cumulative_variance": cumulative_variance(&lambda),
            })
        };
        let (z_train, _) = self.view_in(true);
        json!({
            "z": describe(&z), "y": describe(&y), "centres": describe(&l2_normalize(&f_bar)),
            "z_moments": {"train_bn": moments(&z_train), "probe_bn": moments(&z)},
            "n": z.size()[0], "k": self.k,
        })
    }

    /// B2: instance identification from one fresh view against N instances, for each N: on z
    /// with the three posteriors of §3.1 (a shared kappa fitted on held-out views, per-instance
    /// vMF kappas from the bias-corrected R_bar, and the kernel density over the K bank views),
    /// and on y with a shared kappa. `variants = false` computes the shared-kappa z figures only
    /// (the per-epoch training monitor).
    pub fn instances(&self, sizes: &[usize], variants: bool) -> Value {
        // The variants need every bank view of z and y's centres; the shared-kappa figures
        // only z's centres, streamed (the bank is K times larger).
        let (bank, (f_bar, r)) = if variants {
            let (bank_z, bank_y) = view_bank(self.model, &self.images, self.aug, self.k, self.train_bn, BATCH);
            // The kernel posterior needs centres that are its bank's means: these, which the
            // later analyses share when none were drawn before.
            let c = centres_of(&bank_z);
            let _ = self.centres.set((c.0.shallow_clone(), c.1.shallow_clone()));
            (Some((bank_z, l2_normalize(&centres_of(&bank_y).0))), c)
        } else {
            (None, self.centres())
        };
        let mu = l2_normalize(&f_bar); // [N, d]
        let (z_fit, y_fit) = self.view();
        let (z, y) = self.view();
        let (n, d) = (mu.size()[0], mu.size()[1] as usize);
        let kappas = vmf_kappas(&r, self.k, d);
        let rows: Vec<Value> = sizes
            .iter()
            .map(|&s| s as i64)
            .filter(|&s| s <= n)
            .map(|s| {
                let m = mu.narrow(0, 0, s);
                let truth = Tensor::arange(s, (Kind::Int64, mu.device()));
                let (zf, q) = (z_fit.narrow(0, 0, s), z.narrow(0, 0, s));
                let kappa = fit_kappa(10, &truth, |k| posterior_shared(&zf, &m, k));
                let post = posterior_shared(&q, &m, kappa);
                let mut row = json!({
                    "instances": s, "kappa_shared": kappa, "id": instance_id(&post, &truth),
                    "between_fraction": between_fraction(&post, &m, &q),
                });
                if let Some((bank_z, mu_y)) = &bank {
                    let vmf = posterior_per_instance(&q, &m, &kappas[..s as usize]);
                    let bank = bank_z.narrow(0, 0, s);
                    let kappa_kernel = fit_kappa(5, &truth, |k| posterior_kernel(&zf, &bank, k));
                    let kernel = posterior_kernel(&q, &bank, kappa_kernel);
                    let my = mu_y.narrow(0, 0, s);
                    let yf = y_fit.narrow(0, 0, s);
                    let kappa_y = fit_kappa(10, &truth, |k| posterior_shared(&yf, &my, k));
                    let post_y = posterior_shared(&y.narrow(0, 0, s), &my, kappa_y);
                    row["id_vmf"] = json!(instance_id(&vmf, &truth));
                    row["kappa_kernel"] = json!(kappa_kernel);
                    row["id_kernel"] = json!(instance_id(&kernel, &truth));
                    row["y"] = json!({"kappa_shared": kappa_y, "id": instance_id(&post_y, &truth)});
                }
                row
            })
            .collect();
        json!({
            "by_size": rows, "mean_resultant": mean(&r), "mean_resultant_unbiased": mean_unbiased(&r, self.k),
            "kappa_per_instance_mean": kappas.iter().sum::<f64>() / kappas.len() as f64, "k": self.k,
        })
    }

    /// B1: is the learned predictor close to the optimal one, h*(z) = sum p(x'|Z) f_bar(x')?
    /// h* with the shared-kappa posterior (and, as a check, the per-instance vMF one), against
    /// the baselines cos(h, z), cos(h, f_bar(x_true)), cos(h, o); the achieved similarity
    /// against its floor E\[R_bar\].
    pub fn predictor(&self) -> Value {
        let (f_bar, r) = self.centres();
        let mu = l2_normalize(&f_bar);
        let (n, d) = (mu.size()[0], mu.size()[1] as usize);
        let truth = Tensor::arange(n, (Kind::Int64, mu.device()));
        let (z_fit, _) = self.view();
        let kappa = fit_kappa(10, &truth, |k| posterior_shared(&z_fit, &mu, k));
        let (z, _) = self.view();
        let (z2, _) = self.view();
        let h = tch::no_grad(|| self.model.predictor.forward_t(&z, false)).to_kind(Kind::Float);
        let h_star = oracle_predictor(&posterior_shared(&z, &mu, kappa), &f_bar);
        let h_star_vmf = oracle_predictor(&posterior_per_instance(&z, &mu, &vmf_kappas(&r, self.k, d)), &f_bar);
        let o = mu.mean_dim(&[0i64][..], true, Kind::Float).expand_as(&h);
        let cos_t = |a: &Tensor, b: &Tensor| Tensor::cosine_similarity(a, b, 1, 1e-8);
        let cos = |a: &Tensor, b: &Tensor| mean(&cos_t(a, b));
        let c = cos_t(&h, &h_star);
        json!({
            "kappa_shared": kappa,
            "cos_h_hstar": mean(&c),
            "cos_h_hstar_quantiles": quantiles(&c, &[0.1, 0.5, 0.9]),
            "cos_h_hstar_vmf": cos(&h, &h_star_vmf),
            "cos_h_z": cos(&h, &z),
            "cos_h_centre_true": cos(&h, &f_bar),
            "cos_h_global_mean": cos(&h, &o),
            "cos_hstar_z": cos(&h_star, &z),
            // E[cos(h(z1), z2)] vs its floor E[R_bar(x)] and what h* achieves.
            "achieved_similarity": cos(&h, &z2),
            "floor_similarity_mean_resultant": mean(&r),
            "hstar_similarity": mean(&(l2_normalize(&h_star) * &f_bar).sum_dim_intlist(&[1i64][..], false, Kind::Float)),
        })
    }

    /// B3: shard geometry from held-out views and the centres: angular radius, nearest-centre
    /// similarity, margin, overlap ratio and the separation gap `arccos(s_nn) - 2 rho`, the
    /// centres' uniformity and the distribution of their pairwise similarities.
    pub fn shards(&self) -> Value {
        let (f_bar, _) = self.centres();
        let mu = l2_normalize(&f_bar);
        let n = mu.size()[0];
        let eye = Tensor::eye(n, (Kind::Bool, mu.device()));
        let (z, _) = self.view();
        let zn = l2_normalize(&z);
        let own = (&zn * &mu).sum_dim_intlist(&[1i64][..], false, Kind::Float); // Z . mu_x
        let radius = own.clamp(-1.0, 1.0).acos(); // per query, one view per instance
        let cc = mu.matmul(&mu.tr()); // [N, N]
        let s_nn = cc.masked_fill(&eye, -2.0).amax(&[1i64][..], false);
        let other = zn.matmul(&mu.tr()).masked_fill(&eye, -2.0).amax(&[1i64][..], false);
        let margin = &own - other;
        let gap = s_nn.clamp(-1.0, 1.0).acos() - &radius * 2.0;
        let overlap = s_nn.clamp(-1.0, 1.0).acos() / (&radius * 2.0).clamp_min(1e-6);
        // Wang & Isola uniformity of the centres: log E exp(-2 ||mu - mu'||^2) over pairs.
        let sq = (-&cc + 1.0) * 2.0; // ||a-b||^2 = 2 - 2 a.b
        let unif = ((-&sq * 2.0).exp().masked_fill(&eye, 0.0).sum(Kind::Double) / (n * (n - 1)) as f64)
            .log()
            .double_value(&[]);
        let pairs = cc.masked_select(&eye.logical_not());
        let bins = 40;
        let bin = ((&pairs + 1.0) * (bins as f64 / 2.0)).floor().clamp(0.0, (bins - 1) as f64).to_kind(Kind::Int64);
        let hist = to_vec(&(bin.bincount::<Tensor>(None, bins) / pairs.size()[0] as f64));
        json!({
            "radius_mean_rad": mean(&radius),
            "nearest_centre_similarity_mean": mean(&s_nn),
            "margin_mean": mean(&margin),
            "p_margin_positive": mean(&margin.gt(0.0)),
            "overlap_ratio_median": overlap.median().double_value(&[]),
            "separated_fraction": mean(&overlap.gt(1.0)),
            "separation_gap_mean_rad": mean(&gap),
            "centre_uniformity": unif,
            "pairwise_similarity_quantiles": quantiles(&pairs, &[0.01, 0.05, 0.5, 0.95, 0.99]),
            "pairwise_similarity_histogram": {"low": -1.0, "high": 1.0, "fractions": hist},
        })
    }

    /// B5: invariance of Z and y: mean resultant length (raw and bias-corrected), variance
    /// ratio, alignment, and the mean resultant length under each augmentation family alone.
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
        let (mut raw, mut unbiased) = (serde_json::Map::new(), serde_json::Map::new());
        for (name, cfg) in &families {
            let aug = Augmenter::new(cfg, self.image_size, device);
            let (_, rf) = centres(self.model, &self.images, &aug, self.k, self.train_bn, BATCH);
            raw.insert(name.to_string(), json!(mean(&rf)));
            unbiased.insert(name.to_string(), json!(mean_unbiased(&rf, self.k)));
        }
        json!({
            "mean_resultant": mean(&r),
            "mean_resultant_unbiased": mean_unbiased(&r, self.k),
            "variance_ratio_z": ratio(&a, &b),
            "variance_ratio_y": ratio(&y1, &y2),
            "alignment": alignment,
            "mean_resultant_by_family": raw,
            "mean_resultant_unbiased_by_family": unbiased,
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
        figs.push(Figure::new("dimension", "B4: cumulative explained variance", "components", series));
    }
    if let Some(rows) = out.get("instances").and_then(|v| v["by_size"].as_array()) {
        let line = |key: &str| -> Vec<(f64, f64)> {
            rows.iter().filter_map(|r| Some((r["instances"].as_f64()?, r["id"][key].as_f64()?))).collect()
        };
        figs.push(Figure::new(
            "instances",
            "B2: instance identification from one view",
            "instances N",
            vec![("top-1".into(), line("top1")), ("top-5".into(), line("top5"))],
        ));
    }
    figs.iter()
        .map(|f| {
            render(dir, f)?;
            Ok(dir.join(format!("{}.png", f.stem)))
        })
        .collect()
}
