//! Batched, seeded SimSiam / MoCo v2 augmentation on the training device.
//!
//! Each op is a pure function of the batch and per-image parameters (so it can be checked
//! against hand-computed values); [`Augmenter`] draws those parameters with libtorch's RNG on
//! the same device, so no image leaves the device and there is no host round trip.
//! Definitions follow torchvision (`RandomResizedCrop`, `ColorJitter`, `RandomGrayscale`,
//! `GaussianBlur`, `Normalize`). Images are `[B, 3, H, W]` float in [0, 1] unless noted.
use crate::config::AugmentConfig;
use tch::{Device, Kind, Tensor};

/// ITU-R 601-2 luma, as torchvision's `rgb_to_grayscale`: `[B,3,H,W] -> [B,1,H,W]`.
pub fn grayscale(x: &Tensor) -> Tensor {
    let c = x.unbind(1);
    (&c[0] * 0.2989 + &c[1] * 0.587 + &c[2] * 0.114).unsqueeze(1)
}

/// `(ratio * a + (1 - ratio) * b).clamp(0, 1)` with a per-image ratio `[B]`.
fn blend(a: &Tensor, b: &Tensor, ratio: &Tensor) -> Tensor {
    let r = ratio.view([-1, 1, 1, 1]);
    (a * &r + b * (-&r + 1.0)).clamp(0.0, 1.0)
}

/// torchvision `adjust_brightness`: blend with black.
pub fn adjust_brightness(x: &Tensor, factor: &Tensor) -> Tensor {
    (x * factor.view([-1, 1, 1, 1])).clamp(0.0, 1.0)
}

/// torchvision `adjust_contrast`: blend with the image's mean grey level.
pub fn adjust_contrast(x: &Tensor, factor: &Tensor) -> Tensor {
    let mean = grayscale(x).mean_dim(&[1i64, 2, 3][..], true, Kind::Float);
    blend(x, &mean, factor)
}

/// torchvision `adjust_saturation`: blend with the grey image.
pub fn adjust_saturation(x: &Tensor, factor: &Tensor) -> Tensor {
    blend(x, &grayscale(x), factor)
}

/// torchvision `_rgb2hsv`: `[B,3,H,W] -> (h, s, v)`, each `[B,H,W]`, h in [0, 1).
fn rgb_to_hsv(x: &Tensor) -> (Tensor, Tensor, Tensor) {
    let c = x.unbind(1);
    let (r, g, b) = (&c[0], &c[1], &c[2]);
    let maxc = r.maximum(g).maximum(b);
    let minc = r.minimum(g).minimum(b);
    let eqc = maxc.eq_tensor(&minc);
    let cr = &maxc - &minc;
    let ones = maxc.ones_like();
    let s = &cr / maxc.where_self(&eqc.logical_not(), &ones);
    let cr_div = cr.where_self(&eqc.logical_not(), &ones);
    let rc = (&maxc - r) / &cr_div;
    let gc = (&maxc - g) / &cr_div;
    let bc = (&maxc - b) / &cr_div;
    let is_r = maxc.eq_tensor(r);
    let is_g = maxc.eq_tensor(g).logical_and(&is_r.logical_not());
    let is_b = is_r.logical_or(&is_g).logical_not();
    let hr = is_r.to_kind(Kind::Float) * (&bc - &gc);
    let hg = is_g.to_kind(Kind::Float) * (&rc - &bc + 2.0);
    let hb = is_b.to_kind(Kind::Float) * (&gc - &rc + 4.0);
    let h = ((hr + hg + hb) / 6.0 + 1.0).fmod(1.0);
    (h, s, maxc)
}

/// torchvision `_hsv2rgb`: `(h, s, v)` each `[B,H,W]` -> `[B,3,H,W]`.
fn hsv_to_rgb(h: &Tensor, s: &Tensor, v: &Tensor) -> Tensor {
    let h6 = h * 6.0;
    let i = h6.floor();
    let f = &h6 - &i;
    let i = i.to_kind(Kind::Int64).remainder(6).unsqueeze(1);
    let p = (v * (-s + 1.0)).clamp(0.0, 1.0);
    let q = (v * (-(s * &f) + 1.0)).clamp(0.0, 1.0);
    let t = (v * (-(s * (-&f + 1.0)) + 1.0)).clamp(0.0, 1.0);
    // The sector i picks each channel from (v, q, p, t): one gather per channel.
    let pick = |cands: [&Tensor; 6]| Tensor::stack(&cands, 1).gather(1, &i, false);
    Tensor::cat(&[pick([v, &q, &p, &p, &t, v]), pick([&t, v, v, &q, &p, &p]), pick([&p, &p, &t, v, v, &q])], 1)
}

/// torchvision `adjust_hue`: rotate the hue by a per-image `factor` in [-0.5, 0.5].
pub fn adjust_hue(x: &Tensor, factor: &Tensor) -> Tensor {
    let (h, s, v) = rgb_to_hsv(x);
    let h = (h + factor.view([-1, 1, 1])).remainder(1.0);
    hsv_to_rgb(&h, &s, &v)
}

/// Crops box `[B,4] = (x0, y0, w, h)` (whole pixels) of each image, resizes it to
/// `size x size` and mirrors it where `flip` `[B]` is true, as torchvision's `RandomResizedCrop`
/// and `RandomHorizontalFlip` do once the box and the flip are drawn: its bilinear resize with
/// antialiasing (PIL's filter, and torchvision's default for tensors), the crop's edges clamped.
/// The resize is separable and linear, so each image's is two small matrices
/// (`resample_weights`, made for both axes at once) and the batch's is two batched matrix
/// products.
pub fn resized_crop_flip(x: &Tensor, boxes: &Tensor, flip: &Tensor, size: i64) -> Tensor {
    let (b, c, h, w) = x.size4().expect("[B,3,H,W]");
    // Columns' spans then rows': [2B] starts and lengths. Weights past a span are zero, so one
    // axis length, the longer, serves both: [2B,S,max(H,W)] -> [B,S,W] and [B,S,H].
    let starts = Tensor::cat(&[boxes.select(1, 0), boxes.select(1, 1)], 0);
    let lens = Tensor::cat(&[boxes.select(1, 2), boxes.select(1, 3)], 0);
    let both = resample_weights(&starts, &lens, h.max(w), size);
    let (wx, wy) = (both.narrow(0, 0, b).narrow(2, 0, w), both.narrow(0, b, b).narrow(2, 0, h));
    // The flip reverses the output's columns: the rows of their weights.
    let wx = wx.flip([1]).where_self(&flip.view([-1, 1, 1]), &wx);
    // Along rows, [B, C*H, W] x [B, W, S] -> [B, C, H, S]; then along columns, per channel,
    // [B, 1, S, H] x [B, C, H, S] -> [B, C, S, S].
    let rows = x.reshape([b, c * h, w]).bmm(&wx.transpose(1, 2)).view([b, c, h, size]);
    wy.unsqueeze(1).matmul(&rows)
}

/// The weights `[B, out, n]` that resize the span `[start, start + len)` (`[B]` each, whole
/// pixels) of an axis of `n` pixels to `out` pixels, as PIL's and PyTorch's antialiased
/// bilinear filter makes them: output pixel o is centred on `start + (o + 0.5) len / out`; the
/// triangle filter is stretched by the shrink factor `len / out` where the span shrinks (so
/// every pixel counts, no aliasing) and is one pixel wide where it grows; only the span's
/// pixels count (a crop then a resize: its edges clamp), and each row sums to 1.
fn resample_weights(start: &Tensor, len: &Tensor, n: i64, out: i64) -> Tensor {
    let opts = (Kind::Float, start.device());
    let (start, len) = (start.view([-1, 1, 1]), len.view([-1, 1, 1]));
    // [B,1,1]: input pixels per output pixel.
    let scale = &len / out as f64;
    // [B,out,1]: each output pixel's centre; [1,1,n]: each input pixel's.
    let centre = Tensor::arange_start_step(0.5, out as f64, 1.0, opts).view([1, out, 1]) * &scale + &start;
    let pixel = Tensor::arange_start_step(0.5, n as f64, 1.0, opts).view([1, 1, n]);
    // [B,1,n]: the span's pixels.
    let inside = pixel.gt_tensor(&start).logical_and(&pixel.lt_tensor(&(&start + &len)));
    // [B,out,n]: the triangle 1 - |distance| / width, zero outside it and outside the span.
    let w = (-((pixel - centre).abs() / scale.clamp_min(1.0)) + 1.0).relu() * inside;
    &w / w.sum_dim_intlist(&[2i64][..], true, Kind::Float)
}

/// Gaussian blur with a per-image sigma `[B]`; images where `apply` is false are unchanged
/// (their kernel is a delta). Separable, reflect-padded, as torchvision's `gaussian_blur`.
pub fn gaussian_blur(x: &Tensor, sigma: &Tensor, apply: &Tensor, ksize: i64) -> Tensor {
    let (b, c, h, w) = x.size4().expect("[B,3,H,W]");
    let half = (ksize - 1) as f64 / 2.0;
    let opts = (Kind::Float, x.device());
    let pos = Tensor::linspace(-half, half, ksize, opts).view([1, ksize]);
    let g = (-(pos.pow_tensor_scalar(2.0) / sigma.view([-1, 1]).pow_tensor_scalar(2.0)) * 0.5).exp();
    let g = &g / g.sum_dim_intlist(&[1i64][..], true, Kind::Float);
    let delta =
        Tensor::zeros([1, ksize], opts).index_fill(1, &Tensor::from_slice(&[ksize / 2]).to_device(x.device()), 1.0);
    // kernel: [B, k] -> one per (image, channel): [B*C, 1, k]
    let k = g.where_self(&apply.view([-1, 1]), &delta).repeat_interleave_self_int(c, 0, None).unsqueeze(1);
    let p = ksize / 2;
    let xs = x.reshape([1, b * c, h, w]).reflection_pad2d([p, p, p, p]);
    let xs = xs.conv2d(&k.unsqueeze(2), None::<Tensor>, [1, 1], [0, 0], [1, 1], b * c);
    let xs = xs.conv2d(&k.unsqueeze(3), None::<Tensor>, [1, 1], [0, 0], [1, 1], b * c);
    xs.view([b, c, h, w])
}

/// Channel-wise `(x - mean) / std`.
pub fn normalize(x: &Tensor, mean: &Tensor, std: &Tensor) -> Tensor {
    (x - mean.view([1, 3, 1, 1])) / std.view([1, 3, 1, 1])
}

/// uint8 `[B,H,W,3]` -> float `[B,3,H,W]` in [0, 1].
pub fn to_float(images_u8: &Tensor) -> Tensor {
    images_u8.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0
}

/// Where a batch's per-image random parameters come from. Every draw is made for the whole
/// global batch and this batch keeps rows `offset..offset + len`: a rank of a data-parallel job
/// then augments its shard exactly as a single process augments the global batch (same seed,
/// same views), whatever the number of ranks. `copies` views of each image are drawn at once
/// (the batch is the images repeated `copies` times, view-major).
#[derive(Debug, Clone, Copy)]
pub struct Draw {
    pub offset: i64,
    pub len: i64,
    pub global: i64,
    pub copies: i64,
    pub device: Device,
}

impl Draw {
    /// The batch is the whole global batch, one view of each image.
    pub fn whole(b: i64, device: Device) -> Draw {
        Draw { offset: 0, len: b, global: b, copies: 1, device }
    }

    /// Uniform [0, 1) draws `[copies * len, rest..]`.
    pub fn rand(&self, rest: &[i64]) -> Tensor {
        let shape: Vec<i64> = std::iter::once(self.copies * self.global).chain(rest.iter().copied()).collect();
        let t = Tensor::rand(shape, (Kind::Float, self.device));
        if self.len == self.global {
            return t;
        }
        // [copies * global, ..] -> [copies, global, ..] -> this shard's rows of every copy.
        let split: Vec<i64> = [self.copies, self.global].into_iter().chain(rest.iter().copied()).collect();
        let out: Vec<i64> = std::iter::once(self.copies * self.len).chain(rest.iter().copied()).collect();
        t.view(&split[..]).narrow(1, self.offset, self.len).reshape(&out[..])
    }
}

/// Draws torchvision `RandomResizedCrop` boxes `[B,4] = (x0, y0, w, h)` for `H x W` images:
/// ten tries of (area scale, log-uniform aspect ratio), the first that fits wins, else the
/// centre crop with the ratio clamped. All on the device, no host sync.
pub fn sample_crop_boxes(draw: Draw, h: i64, w: i64, scale: [f64; 2], ratio: [f64; 2]) -> Tensor {
    const TRIES: i64 = 10;
    let area = (h * w) as f64;
    let target = (draw.rand(&[TRIES]) * (scale[1] - scale[0]) + scale[0]) * area;
    let (l0, l1) = (ratio[0].ln(), ratio[1].ln());
    let ar = (draw.rand(&[TRIES]) * (l1 - l0) + l0).exp();
    let cw = (&target * &ar).sqrt().round();
    let ch = (&target / &ar).sqrt().round();
    let fits = cw.gt(0.0).logical_and(&cw.le(w as f64)).logical_and(&ch.gt(0.0)).logical_and(&ch.le(h as f64));
    // First fitting try (argmax of a 0/1 row returns the first 1).
    let first = fits.to_kind(Kind::Float).argmax(1, true);
    let any = fits.any_dim(1, true);
    // Fallback: whole image with the aspect ratio clamped into range (Python's round: half
    // to even).
    let in_ratio = w as f64 / h as f64;
    let (fw, fh) = if in_ratio < ratio[0] {
        (w as f64, (w as f64 / ratio[0]).round_ties_even())
    } else if in_ratio > ratio[1] {
        ((h as f64 * ratio[1]).round_ties_even(), h as f64)
    } else {
        (w as f64, h as f64)
    };
    let bw = cw.gather(1, &first, false).where_scalarother(&any, fw);
    let bh = ch.gather(1, &first, false).where_scalarother(&any, fh);
    // Offsets: uniform integers in [0, W - w] and [0, H - h]; the fallback is centred,
    // `(W - w) // 2` (floor) as torchvision's.
    let x0 = (draw.rand(&[1]) * (-&bw + (w + 1) as f64)).floor().where_self(&any, &((-&bw + w as f64) / 2.0).floor());
    let y0 = (draw.rand(&[1]) * (-&bh + (h + 1) as f64)).floor().where_self(&any, &((-&bh + h as f64) / 2.0).floor());
    Tensor::cat(&[x0, y0, bw, bh], 1)
}

/// Per-image factor uniform in `[max(0, 1 - s), 1 + s]` (torchvision's jitter range).
fn jitter_factor(draw: Draw, s: f64) -> Tensor {
    let lo = (1.0 - s).max(0.0);
    draw.rand(&[]) * (1.0 + s - lo) + lo
}

fn coin(draw: Draw, p: f64) -> Tensor {
    draw.rand(&[]).lt(p)
}

/// Per-image `ColorJitter` parameters, each `[B]`: factors, hue shift, and `order` `[B, 4]`,
/// the op applied at each position (0 brightness, 1 contrast, 2 saturation, 3 hue).
pub struct Jitter {
    pub brightness: Tensor,
    pub contrast: Tensor,
    pub saturation: Tensor,
    pub hue: Tensor,
    pub order: Tensor,
}

/// torchvision's `ColorJitter` with per-image parameters, on images where `on` `[B]` is true,
/// without gathering sub-batches (no host sync). Brightness, contrast and saturation are each
/// one blend `clamp(r x + (1 - r) t)` with a different target t (black, the mean grey level,
/// the grey image), so a slot where every image applies one of them, or none (r = 1), is one
/// blend with a per-image target. Hue (RGB -> HSV -> RGB) is costly, so it runs once: each
/// image's ops before its hue position go in three "pre" slots, hue, then three "post" slots.
pub fn color_jitter(x: &Tensor, on: &Tensor, p: &Jitter, with_hue: bool) -> Tensor {
    let dev = x.device();
    let b = x.size()[0];
    let one = Tensor::ones([b], (Kind::Float, dev));
    let none = Tensor::full([b], -1, (Kind::Int64, dev));
    // One slot: `op` [B] names the blend each image applies there (-1: none).
    let blend_slot = |x: Tensor, op: &Tensor| {
        let at = |o: i64| op.eq(o).logical_and(on);
        let (bright, contrast, sat) = (at(0), at(1), at(2));
        // r [B]: the image's factor, 1 where it applies none.
        let r =
            p.brightness.where_self(&bright, &p.contrast.where_self(&contrast, &p.saturation.where_self(&sat, &one)));
        // t [B,1,H,W]: 0 (brightness, none), the mean grey level (contrast), the grey image (saturation).
        let grey = grayscale(&x);
        let mean = grey.mean_dim(&[1i64, 2, 3][..], true, Kind::Float);
        let per_image = |m: &Tensor| m.view([-1, 1, 1, 1]);
        let t = mean.where_self(&per_image(&contrast), &grey.where_scalarother(&per_image(&sat), 0.0));
        blend(&x, &t, &r)
    };
    let mut x = x.shallow_clone();
    if !with_hue {
        for k in 0..4 {
            x = blend_slot(x, &p.order.select(1, k));
        }
        return x;
    }
    // Position of hue in each image's order, [B].
    let h = p.order.argsort(1, false).select(1, 3);
    for j in 0..3 {
        x = blend_slot(x, &p.order.select(1, j).where_self(&h.gt(j), &none));
    }
    x = adjust_hue(&x, &p.hue.where_self(on, &one.zeros_like()));
    for j in 0..3 {
        let k = &h + (1 + j);
        let op = p.order.gather(1, &k.clamp_max(3).unsqueeze(1), false).squeeze_dim(1);
        x = blend_slot(x, &op.where_self(&k.le(3), &none));
    }
    x
}

/// The training augmentation, ready to draw views on one device.
#[derive(Debug)]
pub struct Augmenter {
    cfg: AugmentConfig,
    out_size: i64,
    blur_p: f64,
    blur_ksize: i64,
    mean: Tensor,
    std: Tensor,
    /// `(offset, global batch)` when views are drawn for one rank's shard of a global batch.
    shard: Option<(i64, i64)>,
}

impl Augmenter {
    /// The augmentation of a store of `image_size`-pixel images; its views are
    /// `augment.view_size` pixels (the store's side by default).
    pub fn new(cfg: &AugmentConfig, image_size: usize, device: Device) -> Augmenter {
        let to = |v: [f64; 3]| Tensor::from_slice(&v.map(|x| x as f32)).to_device(device);
        let side = cfg.view_side(image_size);
        // ~10% of the view's side, odd, as torchvision's GaussianBlur(23) at 224 px.
        let blur_ksize = 2 * ((side as f64 * 0.05).round() as i64).max(1) + 1;
        Augmenter {
            cfg: cfg.clone(),
            out_size: side as i64,
            blur_p: cfg.effective_blur_p(side),
            blur_ksize,
            mean: to(cfg.mean),
            std: to(cfg.std),
            shard: None,
        }
    }

    /// Normalised views back to pixel values in [0, 1]: `x * std + mean`, `[B,3,H,W]`.
    pub fn denormalize(&self, views: &Tensor) -> Tensor {
        let (mean, std) = (self.mean.to_device(views.device()), self.std.to_device(views.device()));
        (views * std.view([1, 3, 1, 1]) + mean.view([1, 3, 1, 1])).clamp(0.0, 1.0)
    }

    /// Views of batches that are rows `offset..` of a global batch of `global` images (one
    /// rank's shard): the random parameters are drawn for the global batch (see [`Draw`]).
    pub fn sharded(mut self, offset: i64, global: i64) -> Augmenter {
        self.shard = Some((offset, global));
        self
    }

    fn draw(&self, b: i64, copies: i64, device: Device) -> Draw {
        match self.shard {
            Some((offset, global)) if offset + b <= global => Draw { offset, len: b, global, copies, device },
            _ => Draw { copies, ..Draw::whole(b, device) },
        }
    }

    /// The device the views are made on (an input elsewhere, e.g. a host store's batch, is
    /// copied there first).
    pub fn device(&self) -> Device {
        self.mean.device()
    }

    /// One augmented view per image: uint8 `[B,H,W,3]` -> normalised float `[B,3,S,S]`.
    pub fn view(&self, images_u8: &Tensor) -> Tensor {
        self.views(images_u8, 1).swap_remove(0)
    }

    /// `n` independent augmented views of each image, each `[B,3,S,S]`, in one pass over the
    /// `n x B` batch: the augmentation is some hundreds of small kernels whatever the batch
    /// size (on a GPU their launches, not their work, set its time), so one pass costs about
    /// what one view costs.
    pub fn views(&self, images_u8: &Tensor, n: usize) -> Vec<Tensor> {
        let (b, _, _, _) = images_u8.size4().expect("[B,H,W,3]");
        let images_u8 = images_u8.to_device(self.device());
        let many = if n == 1 { images_u8 } else { images_u8.repeat([n as i64, 1, 1, 1]) };
        self.augment(&many, self.draw(b, n as i64, self.device())).chunk(n as i64, 0)
    }

    /// The augmentation of a batch whose random parameters come from `draw`.
    fn augment(&self, images_u8: &Tensor, draw: Draw) -> Tensor {
        let c = &self.cfg;
        let (_, h, w, _) = images_u8.size4().expect("[B,H,W,3]");
        let x = to_float(images_u8);
        let boxes = sample_crop_boxes(draw, h, w, c.crop_scale, c.crop_ratio);
        let mut x = resized_crop_flip(&x, &boxes, &coin(draw, c.flip_p), self.out_size);
        x = self.color_jitter(&x, draw);
        let gray = coin(draw, c.grayscale_p).view([-1, 1, 1, 1]);
        x = grayscale(&x).expand_as(&x).where_self(&gray, &x);
        if self.blur_p > 0.0 {
            let sigma = draw.rand(&[]) * (c.blur_sigma[1] - c.blur_sigma[0]) + c.blur_sigma[0];
            x = gaussian_blur(&x, &sigma, &coin(draw, self.blur_p), self.blur_ksize);
        }
        normalize(&x, &self.mean, &self.std)
    }

    /// `ColorJitter` applied with probability `jitter_p`, its four parts in an independent
    /// random order per image (torchvision draws a permutation per call): see [`color_jitter`].
    fn color_jitter(&self, x: &Tensor, draw: Draw) -> Tensor {
        let c = &self.cfg;
        let on = coin(draw, c.jitter_p);
        let p = Jitter {
            brightness: jitter_factor(draw, c.brightness),
            contrast: jitter_factor(draw, c.contrast),
            saturation: jitter_factor(draw, c.saturation),
            hue: draw.rand(&[]) * (2.0 * c.hue) - c.hue,
            order: draw.rand(&[4]).argsort(1, false),
        };
        color_jitter(x, &on, &p, c.hue > 0.0)
    }

    /// Per-channel normalisation mean `[3]`.
    pub fn mean(&self) -> &Tensor {
        &self.mean
    }

    /// Per-channel normalisation std `[3]`.
    pub fn std(&self) -> &Tensor {
        &self.std
    }

    /// The side of the views, in pixels.
    pub fn view_side(&self) -> i64 {
        self.out_size
    }

    /// The evaluation view: the centre `S x S` of each image (torchvision's `CenterCrop`; the
    /// whole image when the views are the store's size), scaled and normalised.
    /// uint8 `[B,H,W,3]` -> `[B,3,S,S]`.
    pub fn eval_view(&self, images_u8: &Tensor) -> Tensor {
        let x = centre_crop(&images_u8.to_device(self.device()), self.out_size);
        normalize(&to_float(&x), &self.mean, &self.std)
    }

    /// The linear probe's training view: `main_lincls.py`'s `RandomResizedCrop` (area 8-100%)
    /// and a flip when the views are smaller than the store (ImageNet); the CIFAR recipe, a
    /// random crop of the padded image and a flip, when they are the store's size.
    /// uint8 `[B,H,W,3]` -> normalised `[B,3,S,S]`.
    pub fn probe_view(&self, images_u8: &Tensor) -> Tensor {
        let x = to_float(&images_u8.to_device(self.device()));
        let (b, _, h, w) = x.size4().expect("[B,3,H,W]");
        let x = if h == self.out_size && w == self.out_size {
            random_crop_flip(&x, 4)
        } else {
            let draw = Draw::whole(b, x.device());
            let boxes = sample_crop_boxes(draw, h, w, [0.08, 1.0], [3.0 / 4.0, 4.0 / 3.0]);
            resized_crop_flip(&x, &boxes, &coin(draw, 0.5), self.out_size)
        };
        normalize(&x, &self.mean, &self.std)
    }
}

/// The centre `size x size` of uint8 images `[B,H,W,3]` (torchvision's `CenterCrop`: the top
/// left corner at `round((H - size) / 2)`, ties to even as Python's `round`).
pub fn centre_crop(images_u8: &Tensor, size: i64) -> Tensor {
    let (_, h, w, _) = images_u8.size4().expect("[B,H,W,3]");
    let start = |side: i64| ((side - size) as f64 / 2.0).round_ties_even() as i64;
    if h == size && w == size {
        return images_u8.shallow_clone();
    }
    images_u8.narrow(1, start(h), size).narrow(2, start(w), size)
}

/// The standard CIFAR probe augmentation: zero-pad by `pad`, take a random `H x W` crop, flip
/// with p = 0.5 (torchvision `RandomCrop(32, padding=4)` + `RandomHorizontalFlip`). `[B,3,H,W]`.
pub fn random_crop_flip(x: &Tensor, pad: i64) -> Tensor {
    let (b, _, h, w) = x.size4().expect("[B,3,H,W]");
    let dev = x.device();
    let padded = x.constant_pad_nd([pad, pad, pad, pad]);
    let draw = Draw::whole(b, dev);
    let off = || (draw.rand(&[1]) * (2 * pad + 1) as f64).floor();
    let size = Tensor::from_slice(&[w as f32, h as f32]).to_device(dev).view([1, 2]).expand([b, 2], false);
    let boxes = Tensor::cat(&[off(), off(), size], 1);
    resized_crop_flip(&padded, &boxes, &coin(draw, 0.5), h)
}
