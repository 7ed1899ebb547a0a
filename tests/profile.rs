//! The profile summary (self times, the device's busy time) against hand-computed values, and
//! PyTorch's profiler recording a real augmentation on the CPU.
use simsiam::augment::Augmenter;
use simsiam::config::AugmentConfig;
use simsiam::profile::{self, Event};
use tch::{Device, Kind, Tensor};

fn ev(name: &str, on_device: bool, lane: i64, start_ns: u64, end_ns: u64) -> Event {
    Event { name: name.into(), on_device, start_ns, dur_ns: end_ns - start_ns, lane }
}

/// ms per step of `ns` nanoseconds over 2 steps.
fn ms(ns: f64) -> f64 {
    ns / 1e6 / 2.0
}

#[test]
fn self_times_exclude_nested_calls_and_device_time_is_the_union_of_intervals() {
    let events = vec![
        // Thread 1: A encloses B and C; B encloses D.
        ev("A", false, 1, 0, 100),
        ev("B", false, 1, 10, 40),
        ev("D", false, 1, 15, 25),
        ev("C", false, 1, 50, 70),
        // Thread 2 overlaps A in time but is not nested in it.
        ev("aten::conv2d", false, 2, 0, 30),
        // Two overlapping kernels and a later one: busy 20 + 10 ns.
        ev("k_conv_fprop", true, 7, 0, 10),
        ev("k_conv_fprop", true, 7, 5, 20),
        ev("batch_norm_collect_statistics_kernel", true, 7, 30, 40),
    ];
    let p = profile::summarise(&events, 2, 1_000);
    let host = &p.host;
    let own = |n: &str| host.top.iter().find(|r| r.name == n).unwrap_or_else(|| panic!("{n} missing")).ms_per_step;
    for (n, want) in [("A", 50.0), ("B", 20.0), ("C", 20.0), ("D", 10.0), ("aten::conv2d", 30.0)] {
        assert!((own(n) - ms(want)).abs() < 1e-12, "{n}: {} vs {}", own(n), ms(want));
    }
    assert!((host.busy_ms_per_step - ms(130.0)).abs() < 1e-12);
    assert_eq!(host.events_per_step, 2.5);
    let dev = p.device.as_ref().expect("device side");
    assert!((dev.busy_ms_per_step - ms(30.0)).abs() < 1e-12, "{}", dev.busy_ms_per_step);
    assert_eq!(dev.events_per_step, 1.5);
    // The two convolution kernels add up to 25 ns (their own durations, overlap included).
    let conv = dev.categories.iter().find(|c| c.category == "convolution").expect("convolution");
    assert!((conv.ms_per_step - ms(25.0)).abs() < 1e-12);
    assert!((conv.share - 25.0 / 35.0).abs() < 1e-12);
    assert_eq!(dev.top[0].calls_per_step, 1.0);
    assert!((p.wall_ms_per_step - ms(1_000.0)).abs() < 1e-12);
    // Names as cuDNN and ATen's CUDA kernels spell them.
    for (name, want) in [
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "convolution"),
        ("sm80_xmma_wgrad_implicit_gemm_indexed_bf16bf16", "convolution"),
        ("batch_norm_backward_reduce_channels_last_kernel", "batch norm"),
        ("void at::native::vectorized_elementwise_kernel<4, convert_to_bfloat16>", "copy / layout / cast"),
        ("void at::native::multi_tensor_apply_kernel<FusedSgdMathFunctor>", "optimizer"),
        ("ampere_bf16_s16816gemm_bf16_128x64_ldg8_f2f_tn", "matrix multiply"),
        ("aten::bmm", "matrix multiply"),
        // Host-side bookkeeping, not elementwise work; ReLU and its in-place form are.
        ("aten::empty", "allocation / views (no arithmetic)"),
        ("aten::as_strided_", "allocation / views (no arithmetic)"),
        ("aten::relu_", "elementwise (ReLU, adds, colour ops, ...)"),
        ("aten::threshold_backward", "elementwise (ReLU, adds, colour ops, ...)"),
    ] {
        assert_eq!(profile::category(name), want, "{name}");
    }
    let md = p.markdown("synthetic");
    assert!(md.contains("GPU: 0.00 ms per step busy") && md.contains("| batch norm |"), "{md}");
}

#[test]
fn the_profiler_records_a_real_augmentation_on_the_cpu() {
    let tmp = tempfile::tempdir().unwrap();
    let trace = tmp.path().join("trace.json");
    let aug = Augmenter::new(&AugmentConfig::default(), 32, Device::Cpu);
    let images = Tensor::randint(256, [16, 32, 32, 3], (Kind::Uint8, Device::Cpu));
    let (views, events) = profile::record(false, Some(&trace), || {
        let mut out = Vec::new();
        for _ in 0..2 {
            let _r = profile::range(c"augment");
            out.push(tch::no_grad(|| aug.views(&images, 2)));
        }
        Ok(out)
    })
    .expect("profiled");
    assert_eq!(views.len(), 2);
    let count = |n: &str| events.iter().filter(|e| e.name == n).count();
    // Both views of a batch come from one crop pass: two batched matrix products per call.
    assert_eq!(count("aten::bmm"), 4);
    assert_eq!(count("augment"), 2);
    assert!(events.iter().all(|e| !e.on_device));
    let p = profile::summarise(&events, 2, 1);
    let crop = p.host.top.iter().find(|r| r.name == "aten::bmm").expect("in the top rows");
    assert_eq!(crop.calls_per_step, 2.0);
    assert_eq!(crop.category, "matrix multiply");
    let shares: f64 = p.host.categories.iter().map(|c| c.share).sum();
    assert!((shares - 1.0).abs() < 1e-9, "{shares}");
    let t: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&trace).unwrap()).expect("JSON trace");
    let names: Vec<&str> =
        t["traceEvents"].as_array().expect("traceEvents").iter().filter_map(|e| e["name"].as_str()).collect();
    assert!(names.contains(&"aten::bmm") && names.contains(&"augment"), "{} events", names.len());
}
