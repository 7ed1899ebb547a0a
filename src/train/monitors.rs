//! The epoch monitors, rank 0's, at initialisation and every `monitor.knn_every` epochs: kNN
//! top-1 on the held-out split, the geometry of a fixed subset, and (with `monitor.instances`)
//! instance identification (B6).
use super::metrics::MetricsLog;
use super::Network;
use crate::analysis;
use crate::augment::Augmenter;
use crate::checkpoint::Position;
use crate::config::Config;
use crate::data::ImageStore;
use crate::error::Result;
use crate::eval::knn;
use crate::model::SimSiam;
use serde_json::json;
use tch::nn::ModuleT;
use tch::{Device, Tensor};

/// Geometry of a fixed evaluation subset (eval-mode BN): spectra of z and y, covariance of z,
/// and Zhang et al.'s `c(eta)` grid from z and p.
fn geometry(model: &SimSiam, images: &Tensor, aug: &Augmenter) -> (analysis::Geometry, Vec<(f64, f64)>) {
    tch::no_grad(|| {
        let (mut zs, mut ys) = (Vec::new(), Vec::new());
        let n = images.size()[0];
        for s in (0..n).step_by(512) {
            let x = aug.eval_view(&images.narrow(0, s, 512.min(n - s)));
            let y = model.features(&x, false);
            zs.push(y.apply_t(&model.projector, false));
            ys.push(y);
        }
        let z = Tensor::cat(&zs, 0);
        let p = model.predictor.forward_t(&z, false);
        (analysis::geometry(&z, &Tensor::cat(&ys, 0)), analysis::eta_grid(&z, &p))
    })
}

/// What the epoch monitors read: the run's config, stores and augmenter.
pub(super) struct EpochMonitors<'a> {
    cfg: &'a Config,
    train: &'a ImageStore,
    /// The held-out split, when there is one.
    test: Option<&'a ImageStore>,
    /// kNN needs classes on both sides; unlabelled data still gets the others.
    knn_on: bool,
    aug: &'a Augmenter,
    device: Device,
    /// A fixed subset for the geometry monitor: the first images of the test split (or of the
    /// training split without one), on the device.
    geometry_images: Tensor,
}

impl<'a> EpochMonitors<'a> {
    pub(super) fn new(
        cfg: &'a Config,
        train: &'a ImageStore,
        test: Option<&'a ImageStore>,
        knn_on: bool,
        aug: &'a Augmenter,
        device: Device,
    ) -> EpochMonitors<'a> {
        let src = test.unwrap_or(train);
        let n = (cfg.monitor.geometry_samples as i64).min(src.len() as i64);
        let geometry_images = src.images.narrow(0, 0, n).to_device(device);
        EpochMonitors { cfg, train, test, knn_on, aug, device, geometry_images }
    }

    /// Runs every monitor on `net` at `pos` and writes its line; returns the kNN top-1.
    pub(super) fn run(&self, net: &Network, log: &mut MetricsLog, pos: Position) -> Result<Option<f64>> {
        let (cfg, aug) = (self.cfg, self.aug);
        let acc = self.test.filter(|_| self.knn_on).map(|test| {
            knn::knn_accuracy(&net.model, self.train, test, aug, &[cfg.monitor.knn_k], cfg.monitor.knn_t)[0]
        });
        if let Some(acc) = acc {
            log.write(json!({"event": "knn", "epoch": pos.epoch, "step": pos.global_step, "knn_top1": acc, "k": cfg.monitor.knn_k, "t": cfg.monitor.knn_t}))?;
        }
        let (g, grid) = geometry(&net.model, &self.geometry_images, aug);
        log.write(
            json!({"event": "geometry", "epoch": pos.epoch, "step": pos.global_step, "geometry": g, "eta_grid": grid}),
        )?;
        if cfg.monitor.instances {
            let src = self.test.unwrap_or(self.train);
            let n = cfg.monitor.instances_n.min(src.len());
            let images = src.images.narrow(0, 0, n as i64).to_device(self.device);
            let probe = crate::analyse::Probe::new(
                &net.model,
                images,
                aug,
                &cfg.augment,
                cfg.data.image_size,
                cfg.monitor.instances_k,
                false,
            );
            let v = probe.instances(&[n], false);
            let row = &v["by_size"][0];
            log.write(json!({
                "event": "instances", "epoch": pos.epoch, "step": pos.global_step, "instances": n,
                "top1": row["id"]["top1"], "top5": row["id"]["top5"], "entropy": row["id"]["entropy"],
                "p_true": row["id"]["p_true"], "between_fraction": row["between_fraction"],
                "kappa_shared": row["kappa_shared"], "mean_resultant": v["mean_resultant"],
            }))?;
        }
        Ok(acc)
    }
}
