//! Export / import round trip and `.npy` embeddings read back per the NPY format spec.
use simsiam::augment::Augmenter;
use simsiam::config::Config;
use simsiam::data::ImageStore;
use simsiam::export::*;
use simsiam::train::Network;
use tch::{Device, Kind, Tensor};

fn cfg() -> Config {
    Config::resolve("tiny", None, &["model.width=8".into(), "model.zero_init_residual=false".into()]).unwrap()
}

fn store(n: i64) -> ImageStore {
    tch::manual_seed(5);
    ImageStore {
        images: Tensor::randint(256, [n, 32, 32, 3], (Kind::Uint8, Device::Cpu)),
        labels: Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(3),
        classes: vec!["a".into(), "b".into(), "c".into()],
        names: (0..n).map(|i| format!("img{i}.png")).collect(),
        skipped: 0,
    }
}

#[test]
fn torchvision_export_round_trips_to_identical_features() {
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
    export_torchvision(&a.vs, &f).unwrap();
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
    assert_eq!(init_from_torchvision(&mut b.vs, &f).unwrap(), 20 + 20 * 4);
    let s = store(16);
    let aug = Augmenter::new(&c.augment, 32, Device::Cpu);
    let (ya, _) = embed(&a.model, &s, &aug, 8);
    let (yb, _) = embed(&b.model, &s, &aug, 8);
    assert!(ya.equal(&yb), "identical backbone features after the round trip");

    // A different architecture is refused with the entry named.
    let other = Config::resolve("tiny", None, &["model.width=16".into()]).unwrap();
    let mut w = Network::new(&other, Device::Cpu);
    let e = init_from_torchvision(&mut w.vs, &f).unwrap_err().to_string();
    assert!(e.contains("shape") && e.contains("backbone.safetensors"), "{e}");
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
    let c = cfg();
    tch::manual_seed(3);
    let net = Network::new(&c, Device::Cpu);
    let s = store(10);
    let aug = Augmenter::new(&c.augment, 32, Device::Cpu);
    let (y, z) = embed(&net.model, &s, &aug, 4);
    let dir = tempfile::tempdir().unwrap();
    write_embeddings(dir.path(), &y, &z, &s).unwrap();
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
