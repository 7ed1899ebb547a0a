//! Export / import round trip and `.npy` embeddings read back per the NPY format spec.
use simsiam::augment::Augmenter;
use simsiam::config::Config;
use simsiam::data::ImageStore;
use simsiam::export::*;
use simsiam::train::Network;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// libtorch's generator is global and the tests of a file run in parallel threads: each test
/// that seeds it holds this lock, so that its draws are its own.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cfg() -> Config {
    Config::resolve("tiny", None, &["model.width=8".into(), "model.zero_init_residual=false".into()]).unwrap()
}

fn store(n: i64) -> ImageStore {
    tch::manual_seed(5);
    ImageStore::new(
        Tensor::randint(256, [n, 32, 32, 3], (Kind::Uint8, Device::Cpu)),
        Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(3),
        vec!["a".into(), "b".into(), "c".into()],
        (0..n).map(|i| format!("img{i}.png")).collect(),
    )
}

#[test]
fn torchvision_export_round_trips_to_identical_features() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let c = cfg();
    tch::manual_seed(1);
    let a = Network::new(&c, Device::Cpu);
    // Non-trivial BN statistics, as after training.
    for (n, mut t) in a.vs.variables() {
        if n.ends_with("running_mean") || n.ends_with("running_var") {
            tch::no_grad(|| t.copy_(&(Tensor::rand(t.size(), (Kind::Float, Device::Cpu)) + 0.5)));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("backbone.safetensors");
    export_backbone(&a.vs, &f, &ExportFormat::Safetensors).unwrap();
    // torchvision names, with the BN counters strict loading needs, and nothing else.
    let saved: Vec<(String, Tensor)> = Tensor::read_safetensors(&f).unwrap();
    let names: Vec<&str> = saved.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "conv1.weight",
        "bn1.running_var",
        "bn1.num_batches_tracked",
        "layer1.0.conv2.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.bias",
        "layer4.1.bn2.weight",
    ] {
        assert!(names.contains(&want), "{want} missing");
    }
    assert!(names.iter().all(|n| !n.starts_with("backbone") && !n.starts_with("projector") && !n.starts_with("fc")));
    // 20 convs + 20 BNs (x5 entries) in a ResNet-18 = 120 entries.
    assert_eq!(saved.len(), 20 + 20 * 5);

    tch::manual_seed(2);
    let mut b = Network::new(&c, Device::Cpu);
    let got = simsiam::import::init_from(&mut b.vs, &f, &c.model).unwrap();
    assert_eq!((got.backbone.as_str(), got.tensors), ("", 20 + 20 * 4));
    let s = store(16);
    let aug = Augmenter::new(&c.augment, 32, Device::Cpu);
    let (ya, _) = embed(&a.model, &s, &aug, 8);
    let (yb, _) = embed(&b.model, &s, &aug, 8);
    assert!(ya.equal(&yb), "identical backbone features after the round trip");

    // A different architecture is refused with the entry named.
    let other = Config::resolve("tiny", None, &["model.width=16".into()]).unwrap();
    let mut w = Network::new(&other, Device::Cpu);
    let e = simsiam::import::init_from(&mut w.vs, &f, &other.model).unwrap_err().to_string();
    assert!(e.contains("model.width = 8") && e.contains("backbone.safetensors"), "{e}");
}

/// The backbone in `torch.save`'s format: the same tensors as the safetensors export, read back
/// by our reader; the official code's layout under `module.encoder.` with `epoch` and `arch`,
/// which `model.init_from` takes back to identical features. (`torch.load` reading both, and
/// `main_lincls.py`'s loading of the second, were checked with PyTorch: BENCHMARKS.md.)
#[test]
fn torch_save_exports_read_back() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let c = cfg();
    tch::manual_seed(3);
    let a = Network::new(&c, Device::Cpu);
    let dir = tempfile::tempdir().unwrap();
    let (st, pth, official) =
        (dir.path().join("b.safetensors"), dir.path().join("b.pth"), dir.path().join("sub/official.pth.tar"));
    export_backbone(&a.vs, &st, &ExportFormat::for_path(&st, None).unwrap()).unwrap();
    export_backbone(&a.vs, &pth, &ExportFormat::for_path(&pth, None).unwrap()).unwrap();
    let fmt = ExportFormat::for_path(&official, Some(("resnet18".into(), 7))).unwrap();
    assert_eq!(fmt, ExportFormat::Official { arch: "resnet18".into(), epoch: 7 });
    assert_eq!(export_backbone(&a.vs, &official, &fmt).unwrap(), 120);

    let want: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(&st).unwrap().into_iter().collect();
    let got = simsiam::torch_save::read(&pth).unwrap();
    assert_eq!(got.len(), want.len());
    for (n, t) in &got {
        assert!(t.equal(&want[n]) && t.kind() == want[n].kind(), "{n}");
    }
    let got = simsiam::torch_save::read(&official).unwrap();
    assert_eq!(got.len(), want.len(), "only tensors: epoch and arch are an int and a string");
    assert!(got.iter().all(|(n, t)| t.equal(&want[n.strip_prefix("state_dict.module.encoder.").unwrap()])));

    tch::manual_seed(4);
    let mut b = Network::new(&c, Device::Cpu);
    let imported = simsiam::import::init_from(&mut b.vs, &official, &c.model).unwrap();
    assert_eq!(imported.backbone, "state_dict.module.encoder.");
    let s = store(8);
    let aug = Augmenter::new(&c.augment, 32, Device::Cpu);
    assert!(embed(&a.model, &s, &aug, 8).0.equal(&embed(&b.model, &s, &aug, 8).0));

    // Names it cannot write.
    for bad in ["b.npy", "b"] {
        let e = ExportFormat::for_path(Path::new(bad), None).unwrap_err().to_string();
        assert!(e.contains(".safetensors") && e.contains(".pth"), "{e}");
    }
    let e = ExportFormat::for_path(&st, Some(("resnet18".into(), 0))).unwrap_err().to_string();
    assert!(e.contains("--official") && e.contains(".pth"), "{e}");
}

/// Parses an NPY v1/v2 header: (descr, fortran_order, shape, data offset).
fn npy_header(bytes: &[u8]) -> (String, bool, Vec<usize>, usize) {
    assert_eq!(&bytes[..6], b"\x93NUMPY");
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize, 12),
    };
    let h = std::str::from_utf8(&bytes[start..start + len]).unwrap();
    let field = |k: &str| {
        let i = h.find(k).unwrap() + k.len();
        h[i..].trim_start_matches([' ', ':']).to_string()
    };
    let descr = field("'descr'").split('\'').nth(1).unwrap().to_string();
    let fortran = field("'fortran_order'").starts_with("True");
    let shape_txt = field("'shape'");
    let inner = &shape_txt[1..shape_txt.find(')').unwrap()];
    let shape = inner.split(',').filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse().unwrap()).collect();
    assert_eq!((start + len) % 16, 0, "data 16-byte aligned");
    (descr, fortran, shape, start + len)
}

#[test]
fn embeddings_are_standard_npy_files() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let c = cfg();
    tch::manual_seed(3);
    let net = Network::new(&c, Device::Cpu);
    let s = store(10);
    let aug = Augmenter::new(&c.augment, 32, Device::Cpu);
    let (y, z) = embed(&net.model, &s, &aug, 4);
    let dir = tempfile::tempdir().unwrap();
    // Streamed a batch of 4 at a time (the last one 2): the same values as in memory.
    assert_eq!(write_embeddings(dir.path(), &net.model, &s, &aug, 4).unwrap(), ([10, 64], [10, 512]));
    let back = |f: &str| Tensor::read_npy(dir.path().join(f)).unwrap();
    assert!(back("backbone.npy").equal(&y) && back("projector.npy").equal(&z), "tch reads them back");
    let raw = std::fs::read(dir.path().join("backbone.npy")).unwrap();
    let (descr, fortran, shape, off) = npy_header(&raw);
    assert_eq!((descr.as_str(), fortran, shape.clone()), ("<f4", false, vec![10, 64]));
    let vals: Vec<f32> = raw[off..].chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(vals.len(), 640);
    assert_eq!(vals, Vec::<f32>::try_from(y.flatten(0, -1)).unwrap());
    let raw = std::fs::read(dir.path().join("projector.npy")).unwrap();
    assert_eq!(npy_header(&raw).2, vec![10, 512]);
    let raw = std::fs::read(dir.path().join("labels.npy")).unwrap();
    let (descr, _, shape, off) = npy_header(&raw);
    assert_eq!((descr.as_str(), shape), ("<i8", vec![10]));
    let labels: Vec<i64> = raw[off..].chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(labels, vec![0, 1, 2, 0, 1, 2, 0, 1, 2, 0]);
    let names = std::fs::read_to_string(dir.path().join("names.txt")).unwrap();
    assert_eq!(names.lines().nth(3), Some("img3.png"));
}

/// `simsiam data --views N`: a seeded sample of the store's images, each with two views that,
/// with every random op off, are exactly the normalised image; standard `.npy` files; a grid
/// PNG of (image, view 1, view 2) rows drawn at least 96 px tall.
#[test]
fn views_are_a_seeded_sample_with_their_normalised_views_and_a_grid() {
    let _rng = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let c = cfg();
    let s = store(40);
    let write = |aug_cfg: &simsiam::config::AugmentConfig, n: usize, seed: u64| {
        let dir = tempfile::tempdir().unwrap();
        write_views(dir.path(), &s, &Augmenter::new(aug_cfg, 32, Device::Cpu), n, seed).unwrap();
        dir
    };
    let read = |dir: &tempfile::TempDir, name: &str| {
        let raw = std::fs::read(dir.path().join(name)).unwrap();
        let (descr, fortran, shape, off) = npy_header(&raw);
        assert!(!fortran);
        (descr, shape, raw[off..].to_vec())
    };
    // Identity augmentation: view = (image / 255 - mean) / std, both views.
    let dir = write(&c.augment.identity(), 36, 7);
    let (descr, shape, images) = read(&dir, "images.npy");
    assert!(["|u1", "<u1"].contains(&descr.as_str()), "uint8, not {descr}");
    assert_eq!(shape, vec![36, 32, 32, 3]);
    let (descr, shape, views) = read(&dir, "views.npy");
    assert_eq!((descr.as_str(), shape), ("<f4", vec![36, 2, 3, 32, 32]));
    let views: Vec<f32> = views.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let (m, sd) = (c.augment.mean, c.augment.std);
    let mut worst = 0f64;
    for i in 0..36 {
        for v in 0..2 {
            for ch in 0..3 {
                for p in 0..32 * 32 {
                    let want = (images[(i * 1024 + p) * 3 + ch] as f64 / 255.0 - m[ch]) / sd[ch];
                    let got = views[((i * 2 + v) * 3 + ch) * 1024 + p] as f64;
                    worst = worst.max((got - want).abs());
                }
            }
        }
    }
    assert!(worst < 1e-4, "identity views differ from the normalised image by {worst}");
    // The images are distinct rows of the store, named and labelled as such.
    let store_rows: Vec<Vec<u8>> =
        (0..40).map(|i| Vec::<u8>::try_from(s.images.get(i).flatten(0, -1)).unwrap()).collect();
    let names = std::fs::read_to_string(dir.path().join("names.txt")).unwrap();
    let (_, _, labels) = read(&dir, "labels.npy");
    let mut seen = std::collections::HashSet::new();
    for (i, name) in names.lines().enumerate() {
        let row: usize = name.trim_start_matches("img").trim_end_matches(".png").parse().unwrap();
        assert_eq!(images[i * 3072..(i + 1) * 3072], store_rows[row][..], "image {i} is store row {row}");
        assert_eq!(labels[i * 8], (row % 3) as u8);
        assert!(seen.insert(row), "row {row} drawn twice");
    }
    assert_eq!(seen.len(), 36);
    // The grid: 32 rows at most, each pixel a 3x3 block at 32 px.
    let png = image::open(dir.path().join("views.png")).unwrap();
    assert_eq!((png.width(), png.height()), (3 * 32 * 3, 32 * 32 * 3));
    // Seeded: the same seed gives the same sample and views; another seed another sample.
    let (a, b, other) = (write(&c.augment, 5, 1), write(&c.augment, 5, 1), write(&c.augment, 5, 2));
    assert_eq!(read(&a, "views.npy").2, read(&b, "views.npy").2);
    assert_ne!(read(&a, "images.npy").2, read(&other, "images.npy").2);
    // More than the store holds: all of it.
    assert_eq!(read(&write(&c.augment, 100, 1), "images.npy").1[0], 40);
}
