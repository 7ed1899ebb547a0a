//! Each augmentation op against hand-computed values (torchvision's definitions).
use simsiam::augment::*;
use simsiam::config::AugmentConfig;
use tch::{Device, Kind, Tensor};

/// One image `[1,3,h,w]` whose every pixel is `rgb`.
fn solid(rgb: [f32; 3], h: i64, w: i64) -> Tensor {
    Tensor::from_slice(&rgb).view([1, 3, 1, 1]).expand([1, 3, h, w], false).contiguous()
}

fn px(x: &Tensor) -> Vec<f64> {
    (0..3).map(|c| x.double_value(&[0, c, 0, 0])).collect()
}

fn close(a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < tol, "{a:?} vs {b:?}");
    }
}

fn f(v: f32) -> Tensor {
    Tensor::from_slice(&[v])
}

#[test]
fn grayscale_uses_itu_601_weights() {
    let g = grayscale(&solid([1.0, 0.5, 0.25], 2, 2));
    assert_eq!(g.size(), vec![1, 1, 2, 2]);
    close(&[g.double_value(&[0, 0, 1, 1])], &[0.2989 + 0.5 * 0.587 + 0.25 * 0.114], 1e-6);
}

#[test]
fn brightness_scales_and_clamps() {
    let x = solid([0.5, 0.8, 0.1], 1, 1);
    close(&px(&adjust_brightness(&x, &f(1.5))), &[0.75, 1.0, 0.15], 1e-6);
    close(&px(&adjust_brightness(&x, &f(1.0))), &[0.5, 0.8, 0.1], 1e-7);
}

#[test]
fn contrast_blends_with_mean_grey() {
    // Two grey pixels 0.2 and 0.6: mean grey = 0.4 x (0.2989 + 0.587 + 0.114) = 0.39996.
    let x = Tensor::from_slice(&[0.2f32, 0.6, 0.2, 0.6, 0.2, 0.6]).view([1, 3, 1, 2]);
    let y = adjust_contrast(&x, &f(0.5));
    let m = 0.4 * 0.9999;
    close(
        &[y.double_value(&[0, 1, 0, 0]), y.double_value(&[0, 1, 0, 1])],
        &[0.5 * 0.2 + 0.5 * m, 0.5 * 0.6 + 0.5 * m],
        1e-6,
    );
}

#[test]
fn saturation_blends_with_grey_image() {
    let x = solid([1.0, 0.0, 0.0], 1, 1);
    let g = 0.2989;
    close(&px(&adjust_saturation(&x, &f(0.5))), &[0.5 + 0.5 * g, 0.5 * g, 0.5 * g], 1e-6);
    close(&px(&adjust_saturation(&x, &f(0.0))), &[g, g, g], 1e-6);
    // Over-saturation clamps to [0, 1].
    close(&px(&adjust_saturation(&x, &f(2.0))), &[1.0, 0.0, 0.0], 1e-6);
}

#[test]
fn hue_rotates_through_hsv() {
    let red = solid([1.0, 0.0, 0.0], 1, 1);
    close(&px(&adjust_hue(&red, &f(1.0 / 3.0))), &[0.0, 1.0, 0.0], 1e-5);
    close(&px(&adjust_hue(&red, &f(0.5))), &[0.0, 1.0, 1.0], 1e-5);
    close(&px(&adjust_hue(&red, &f(-1.0 / 3.0))), &[0.0, 0.0, 1.0], 1e-5);
    // (0.8, 0.4, 0.2): h = 1/18, s = 0.75, v = 0.8; +0.1 -> h*6 = 0.9333, sector 0:
    // (v, t, p) = (0.8, 0.8(1 - 0.75(1 - 0.9333)), 0.8(1 - 0.75)) = (0.8, 0.76, 0.2).
    let x = solid([0.8, 0.4, 0.2], 1, 1);
    close(&px(&adjust_hue(&x, &f(0.1))), &[0.8, 0.76, 0.2], 1e-5);
    close(&px(&adjust_hue(&x, &f(0.0))), &[0.8, 0.4, 0.2], 1e-6);
}

#[test]
fn resized_crop_flip_samples_the_box() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    // 2x2 image [[0,1],[2,3]] upsampled to 4x4 (bilinear, half-pixel centres, edge clamp):
    // sample points -0.25, 0.25, 0.75, 1.25 -> rows [0, .25, .75, 1] + 2 * [0, .25, .75, 1].
    let x = Tensor::from_slice(&[0.0f32, 1.0, 2.0, 3.0]).view([1, 1, 2, 2]).expand([1, 3, 2, 2], false).contiguous();
    let whole = Tensor::from_slice(&[0.0f32, 0.0, 2.0, 2.0]).view([1, 4]);
    let no = Tensor::from_slice(&[false]);
    let y = resized_crop_flip(&x, &whole, &no, 4);
    let r = [0.0, 0.25, 0.75, 1.0];
    for i in 0..4 {
        for j in 0..4 {
            assert!((y.double_value(&[0, 0, i, j]) - (r[j as usize] + 2.0 * r[i as usize])).abs() < 1e-5);
        }
    }
    // Identity box is the identity; the flip mirrors columns.
    let img = Tensor::rand([1, 3, 8, 8], (Kind::Float, Device::Cpu));
    let full = Tensor::from_slice(&[0.0f32, 0.0, 8.0, 8.0]).view([1, 4]);
    assert!(resized_crop_flip(&img, &full, &no, 8).allclose(&img, 1e-5, 1e-6, false));
    let yes = Tensor::from_slice(&[true]);
    assert!(resized_crop_flip(&img, &full, &yes, 8).allclose(&img.flip([3]), 1e-5, 1e-6, false));
    // A box of the bottom-right quadrant at its own size is that quadrant, exactly.
    let quad = Tensor::from_slice(&[4.0f32, 4.0, 4.0, 4.0]).view([1, 4]);
    assert!(resized_crop_flip(&img, &quad, &no, 4).allclose(&img.narrow(2, 4, 4).narrow(3, 4, 4), 1e-5, 1e-6, false));
}

#[test]
fn crop_boxes_follow_random_resized_crop_ranges() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(3);
    let b = sample_crop_boxes(Draw::whole(4000, Device::Cpu), 32, 32, [0.2, 1.0], [0.75, 4.0 / 3.0]);
    let v = Vec::<Vec<f32>>::try_from(b).unwrap();
    let mut areas = Vec::new();
    for r in &v {
        let (x0, y0, w, h) = (r[0], r[1], r[2], r[3]);
        assert!(x0 >= 0.0 && y0 >= 0.0 && x0 + w <= 32.0 && y0 + h <= 32.0, "{r:?}");
        assert_eq!((x0.fract(), y0.fract(), w.fract(), h.fract()), (0.0, 0.0, 0.0, 0.0));
        let area = w * h / 1024.0;
        // Rounding w and h to integers moves the area and ratio slightly past the ranges.
        assert!(area > 0.15 && area <= 1.0, "{r:?}");
        assert!(w / h > 0.6 && w / h < 1.6, "{r:?}");
        areas.push(area);
    }
    let mean = areas.iter().sum::<f32>() / areas.len() as f32;
    // Tries that do not fit are redrawn, which lowers the mean below 0.6 = E[U(0.2, 1)].
    assert!((0.45..0.62).contains(&mean), "mean area {mean}");
}

/// When no try fits (a wide image, areas near 1), torchvision takes the whole height, the
/// width of the largest ratio, `int(round(10 x 4/3))` = 13, centred by `(40 - 13) // 2` = 13.
#[test]
fn crop_boxes_fall_back_to_torchvision_centred_box() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(5);
    let b = sample_crop_boxes(Draw::whole(64, Device::Cpu), 10, 40, [0.99, 1.0], [0.75, 4.0 / 3.0]);
    for r in Vec::<Vec<f32>>::try_from(b).unwrap() {
        assert_eq!(r, [13.0, 0.0, 13.0, 10.0]);
    }
    // A tall image: the whole width, the height of the smallest ratio, `int(round(10 / 0.75))`
    // = 13, centred likewise.
    let b = sample_crop_boxes(Draw::whole(64, Device::Cpu), 40, 10, [0.99, 1.0], [0.75, 4.0 / 3.0]);
    for r in Vec::<Vec<f32>>::try_from(b).unwrap() {
        assert_eq!(r, [0.0, 13.0, 10.0, 13.0]);
    }
}

#[test]
fn gaussian_blur_matches_its_kernel() {
    // A delta at the centre of a 5x5 image, k = 3, sigma = 1: the output is the outer product
    // of [e^-0.5, 1, e^-0.5] / (1 + 2 e^-0.5).
    let x = Tensor::zeros([1, 3, 5, 5], (Kind::Float, Device::Cpu));
    let _ = x.narrow(2, 2, 1).narrow(3, 2, 1).fill_(1.0);
    let e = (-0.5f64).exp();
    let w = [e / (1.0 + 2.0 * e), 1.0 / (1.0 + 2.0 * e)];
    let y = gaussian_blur(&x, &f(1.0), &Tensor::from_slice(&[true]), 3);
    assert!((y.double_value(&[0, 1, 2, 2]) - w[1] * w[1]).abs() < 1e-6);
    assert!((y.double_value(&[0, 1, 1, 2]) - w[0] * w[1]).abs() < 1e-6);
    assert!((y.double_value(&[0, 1, 1, 1]) - w[0] * w[0]).abs() < 1e-6);
    assert!((y.sum(Kind::Float).double_value(&[]) - 3.0).abs() < 1e-5);
    // Not applied: unchanged. A constant image stays constant (reflect padding).
    let n = gaussian_blur(&x, &f(1.0), &Tensor::from_slice(&[false]), 3);
    assert!(n.allclose(&x, 1e-6, 1e-7, false));
    let c = solid([0.3, 0.3, 0.3], 6, 6);
    assert!(gaussian_blur(&c, &f(2.0), &Tensor::from_slice(&[true]), 5).allclose(&c, 1e-5, 1e-6, false));
}

#[test]
fn normalize_is_channelwise() {
    let x = solid([0.5, 0.5, 0.5], 1, 1);
    let m = Tensor::from_slice(&[0.5f32, 0.25, 0.0]);
    let s = Tensor::from_slice(&[1.0f32, 0.5, 0.25]);
    close(&px(&normalize(&x, &m, &s)), &[0.0, 0.5, 2.0], 1e-6);
}

/// Tests that reseed libtorch's global generator and expect the same draws take this lock
/// (tests run in parallel threads of one process).
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn views_are_seeded_distinct_and_finite() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let aug = Augmenter::new(&AugmentConfig::default(), 32, Device::Cpu);
    let imgs = Tensor::randint(256, [16, 32, 32, 3], (Kind::Uint8, Device::Cpu));
    tch::manual_seed(7);
    let a = aug.view(&imgs);
    let b = aug.view(&imgs);
    tch::manual_seed(7);
    let a2 = aug.view(&imgs);
    assert_eq!(a.size(), vec![16, 3, 32, 32]);
    assert!(a.isfinite().all().int64_value(&[]) == 1);
    assert!(a.equal(&a2), "same seed, same views");
    assert!(!a.allclose(&b, 1e-3, 1e-3, false), "two draws differ");
    // With every op off, a view is the normalised image itself.
    let off = AugmentConfig::default().identity();
    let plain = Augmenter::new(&off, 32, Device::Cpu);
    assert!(plain.view(&imgs).allclose(&plain.eval_view(&imgs), 1e-4, 1e-5, false));
}

#[test]
fn probe_crop_shifts_by_whole_pixels_within_the_padding() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(4);
    let x = Tensor::ones([64, 3, 32, 32], (Kind::Float, Device::Cpu));
    let y = random_crop_flip(&x, 4);
    assert_eq!(y.size(), vec![64, 3, 32, 32]);
    // Whole-pixel shifts: every value is 0 (padding) or 1 (image), never in between.
    let frac = (&y * (-&y + 1.0)).abs().max().double_value(&[]);
    assert!(frac < 1e-5, "{frac}");
    // The centre 24x24 is always inside the image; some crops reach into the padding.
    assert_eq!(y.narrow(2, 4, 24).narrow(3, 4, 24).min().double_value(&[]), 1.0);
    assert!(y.min().double_value(&[]) == 0.0);
}

/// uint8 images `[b, h, w, 3]` whose value at (i, y, x, c) is `(y * w + x) % 256`, the same in
/// every channel: a crop's first value names its corner.
fn numbered(b: i64, h: i64, w: i64) -> Tensor {
    let pos = Tensor::arange(h * w, (Kind::Int64, Device::Cpu)).remainder(256).to_kind(Kind::Uint8);
    pos.view([1, h, w, 1]).expand([b, h, w, 3], false).contiguous()
}

#[test]
fn centre_crop_is_torchvisions() {
    // torchvision's CenterCrop: top = int(round((H - size) / 2)), Python's round (ties to even).
    // Hand values: (10 - 6) / 2 = 2; (9 - 6) / 2 = 1.5 -> 2; (11 - 6) / 2 = 2.5 -> 2;
    // (13 - 6) / 2 = 3.5 -> 4; (256 - 224) / 2 = 16.
    for (h, w, top, left) in [(10, 10, 2, 2), (9, 11, 2, 2), (13, 10, 4, 2)] {
        let c = centre_crop(&numbered(2, h, w), 6);
        assert_eq!(c.size(), vec![2, 6, 6, 3]);
        assert_eq!(c.int64_value(&[1, 0, 0, 2]), top * w + left, "{h}x{w}");
        assert_eq!(c.int64_value(&[0, 5, 5, 0]), (top + 5) * w + left + 5, "{h}x{w}");
    }
    let big = centre_crop(&numbered(1, 256, 256), 224);
    assert_eq!(big.int64_value(&[0, 0, 0, 0]), (16 * 256 + 16) % 256);
    assert_eq!(big.int64_value(&[0, 1, 0, 0]), (17 * 256 + 16) % 256);
    // Images already of the size are returned whole.
    let x = numbered(1, 6, 6);
    assert!(centre_crop(&x, 6).equal(&x));
}

#[test]
fn views_smaller_than_the_store() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(3);
    // A 40-px store with 24-px views (`augment.view_size`), as the ImageNet preset's 256 / 224.
    let cfg = AugmentConfig { view_size: 24, ..AugmentConfig::default() };
    let aug = Augmenter::new(&cfg, 40, Device::Cpu);
    assert_eq!(aug.view_side(), 24);
    let imgs = Tensor::randint(256, [8, 40, 40, 3], (Kind::Uint8, Device::Cpu));
    for v in aug.views(&imgs, 2) {
        assert_eq!(v.size(), vec![8, 3, 24, 24]);
    }
    // Evaluation: exactly the normalised centre 24x24 (offset 8), no resampling.
    let centre = imgs.narrow(1, 8, 24).narrow(2, 8, 24);
    let plain = Augmenter::new(&cfg.identity(), 24, Device::Cpu);
    assert_eq!(aug.eval_view(&imgs).size(), vec![8, 3, 24, 24]);
    assert!(aug.eval_view(&imgs).equal(&plain.eval_view(&centre)));
    // The probe's training view is a random resized crop of the whole image at the view size.
    let p1 = aug.probe_view(&imgs);
    assert_eq!(p1.size(), vec![8, 3, 24, 24]);
    assert!(!p1.allclose(&aug.probe_view(&imgs), 1e-3, 1e-3, false), "two draws differ");
    // At the store's size the probe keeps CIFAR's padded crop: whole-pixel shifts of the image.
    let same = Augmenter::new(&AugmentConfig::default(), 40, Device::Cpu);
    let ones = Tensor::full([16, 40, 40, 3], 255, (Kind::Uint8, Device::Cpu));
    let y = same.denormalize(&same.probe_view(&ones));
    assert_eq!(y.size(), vec![16, 3, 40, 40]);
    assert!((&y * (-&y + 1.0)).abs().max().double_value(&[]) < 1e-4);
    // Every op off but the blur left on auto: a view is the whole image resized bilinearly with
    // antialiasing (`F.interpolate(..., antialias=True)`), unblurred, because auto blur follows
    // the views' size (24 px, off), not the store's (40 px, on).
    let auto_blur = AugmentConfig { blur_p: -1.0, ..cfg.identity() };
    let whole = Augmenter::new(&auto_blur, 40, Device::Cpu);
    let resized = to_float(&imgs).internal_upsample_bilinear2d_aa([24, 24], false, None, None);
    let expect = normalize(&resized, whole.mean(), whole.std());
    let diff = (whole.view(&imgs) - expect).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "{diff}");
    // With 40-px views of the same store, auto blur is on (p = 0.5): some views are blurred.
    let big = Augmenter::new(&AugmentConfig { view_size: 40, ..auto_blur }, 40, Device::Cpu);
    let blurred = (big.view(&imgs) - big.eval_view(&imgs)).abs().amax([1i64, 2, 3].as_slice(), false);
    assert!(blurred.max().double_value(&[]) > 0.1, "{blurred}");
}

/// The direct form of per-image-order `ColorJitter`: at each of the four positions every op
/// runs, with its identity factor except the one the image's order puts there.
fn color_jitter_reference(x: &Tensor, on: &Tensor, p: &Jitter) -> Tensor {
    let b = x.size()[0];
    let one = Tensor::ones([b], (Kind::Float, Device::Cpu));
    let zero = Tensor::zeros([b], (Kind::Float, Device::Cpu));
    let mut x = x.shallow_clone();
    for k in 0..4 {
        let at = |op: i64| p.order.select(1, k).eq(op).logical_and(on);
        x = adjust_brightness(&x, &p.brightness.where_self(&at(0), &one));
        x = adjust_contrast(&x, &p.contrast.where_self(&at(1), &one));
        x = adjust_saturation(&x, &p.saturation.where_self(&at(2), &one));
        x = adjust_hue(&x, &p.hue.where_self(&at(3), &zero));
    }
    x
}

#[test]
fn color_jitter_with_one_hue_pass_equals_the_four_position_form() {
    tch::manual_seed(11);
    let b = 64;
    let x = Tensor::rand([b, 3, 16, 16], (Kind::Float, Device::Cpu));
    let f = |lo: f64, hi: f64| Tensor::rand([b], (Kind::Float, Device::Cpu)) * (hi - lo) + lo;
    let p = Jitter {
        brightness: f(0.6, 1.4),
        contrast: f(0.6, 1.4),
        saturation: f(0.6, 1.4),
        hue: f(-0.1, 0.1),
        order: Tensor::rand([b, 4], (Kind::Float, Device::Cpu)).argsort(1, false),
    };
    let on = Tensor::rand([b], (Kind::Float, Device::Cpu)).lt(0.8);
    let got = color_jitter(&x, &on, &p, true);
    let want = color_jitter_reference(&x, &on, &p);
    let d = (&got - &want).abs().max().double_value(&[]);
    assert!(d < 1e-5, "max difference {d}");
    // Without hue (hue = 0: the reference's HSV round trips change nothing beyond rounding).
    let no_hue = Jitter {
        brightness: p.brightness.shallow_clone(),
        contrast: p.contrast.shallow_clone(),
        saturation: p.saturation.shallow_clone(),
        hue: p.hue.zeros_like(),
        order: p.order.shallow_clone(),
    };
    let d = (color_jitter(&x, &on, &no_hue, false) - color_jitter_reference(&x, &on, &no_hue)).abs().max();
    assert!(d.double_value(&[]) < 1e-5, "without hue: max difference {d}");
    // Images with jitter off are unchanged (up to one HSV round trip).
    let off = on.logical_not().nonzero().squeeze_dim(1);
    let d_off = (got.index_select(0, &off) - x.index_select(0, &off)).abs().max().double_value(&[]);
    assert!(d_off < 1e-5, "{d_off}");
    // And the jitter does something to the others.
    assert!((&got - &x).abs().max().double_value(&[]) > 0.05);
}

/// The view's crop and resize is torchvision's on the same box: `F.resized_crop` of the float
/// image (bilinear, antialiased, as torchvision resizes tensors) and of the PIL image (what
/// lightly's and the official code's transforms see), then the flip, on boxes that enlarge,
/// shrink, touch each border and mirror (`scripts/reference/augment_fixture.py` wrote the
/// references). Cases of one output size go through in one batch, as training draws them.
#[test]
fn resized_crop_flip_is_torchvisions_resized_crop() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let photo = image::open(dir.join("resize/photo.png")).unwrap().to_rgb8();
    let (w, h) = (photo.width() as i64, photo.height() as i64);
    let x = to_float(&Tensor::from_slice(photo.as_raw()).view([1, h, w, 3]));
    let cases: Vec<[i64; 6]> = std::fs::read_to_string(dir.join("augment/boxes.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(' ').map(|v| v.parse().unwrap()).collect::<Vec<i64>>().try_into().unwrap())
        .collect();
    assert_eq!(cases.len(), 10, "boxes.txt");
    let mut sizes: Vec<i64> = cases.iter().map(|c| c[4]).collect();
    sizes.sort();
    sizes.dedup();
    for size in sizes {
        let batch: Vec<usize> = (0..cases.len()).filter(|&i| cases[i][4] == size).collect();
        let boxes: Vec<f32> = batch.iter().flat_map(|&i| cases[i][..4].iter().map(|&v| v as f32)).collect();
        let flips: Vec<bool> = batch.iter().map(|&i| cases[i][5] == 1).collect();
        let n = batch.len() as i64;
        let ours = resized_crop_flip(
            &x.expand([n, 3, h, w], false),
            &Tensor::from_slice(&boxes).view([n, 4]),
            &Tensor::from_slice(&flips),
            size,
        );
        for (row, &i) in batch.iter().enumerate() {
            let ours = ours.get(row as i64);
            let tensor = f32_fixture(&format!("tensor-{i}.f32"), &[3, size, size]);
            let off = (&ours - &tensor).abs().max().double_value(&[]);
            let pil = Tensor::from_slice(&std::fs::read(dir.join(format!("augment/pil-{i}.rgb"))).unwrap())
                .view([size, size, 3])
                .permute([2, 0, 1])
                .to_kind(Kind::Float);
            let levels = (&ours * 255.0 - pil).abs();
            let (mean, max) = (levels.mean(Kind::Float).double_value(&[]), levels.max().double_value(&[]));
            eprintln!("case {i} {:?}: tensor max |diff| {off:.2e}; PIL mean {mean:.3}, max {max:.2} levels", cases[i]);
            assert!(off < 1e-5, "case {i} {:?}: {off} off torchvision's tensor resize", cases[i]);
            // PIL resizes in 8 bits, rounding after each pass: within a grey level.
            assert!(mean < 0.35 && max < 1.01, "case {i} {:?}: PIL mean {mean}, max {max}", cases[i]);
        }
    }
}

/// A little-endian float32 array of `tests/fixtures/augment/` as a tensor of `shape`.
fn f32_fixture(name: &str, shape: &[i64]) -> Tensor {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/augment").join(name);
    let bytes = std::fs::read(path).unwrap();
    let floats: Vec<f32> = bytes.chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    Tensor::from_slice(&floats).view(shape)
}

/// Each colour op and the blur against torchvision's functional op on two images at once,
/// each with its own parameter: a cut of a photo, and noise in steps of 1/255 (every hue
/// sector, channels tied) (`scripts/reference/augment_fixture.py`).
#[test]
fn colour_ops_and_blur_are_torchvisions() {
    let x = f32_fixture("input.f32", &[2, 3, 32, 32]);
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/augment");
    let ops = std::fs::read_to_string(dir.join("ops.txt")).unwrap();
    let yes = Tensor::from_slice(&[true, true]);
    assert_eq!(ops.lines().count(), 8, "ops.txt");
    for line in ops.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let (name, a, b): (&str, f32, f32) = (parts[0], parts[1].parse().unwrap(), parts[2].parse().unwrap());
        let factor = Tensor::from_slice(&[a, b]);
        let ours = match name {
            "brightness" => adjust_brightness(&x, &factor),
            "contrast" => adjust_contrast(&x, &factor),
            "saturation" => adjust_saturation(&x, &factor),
            "hue" | "hue-half" => adjust_hue(&x, &factor),
            "grayscale" => grayscale(&x),
            "blur5" => gaussian_blur(&x, &factor, &yes, 5),
            "blur9" => gaussian_blur(&x, &factor, &yes, 9),
            other => panic!("no op {other} in ops.txt"),
        };
        let theirs = f32_fixture(&format!("op-{name}.f32"), &ours.size());
        let off = (&ours - &theirs).abs().max().double_value(&[]);
        eprintln!("{name} ({a}, {b}): max |difference| {off:.2e}");
        assert!(off < 1e-5, "{name} ({a}, {b}): {off} off torchvision's");
    }
}
