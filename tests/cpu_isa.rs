//! Every CPU instruction-set tier this machine has gives correct results. A separate test
//! binary (its own process), because the tier limit is process-wide.

use a3d::cpu::{self, Isa};
use a3d::fusion::{self, Grads};
use a3d::selftest;

#[test]
fn every_available_tier_passes_the_selftest_and_is_deterministic() {
    let detected = cpu::detected_isa();
    println!("detected CPU tier: {}", detected.as_str());
    for tier in Isa::ALL.into_iter().filter(|t| *t <= detected) {
        cpu::set_isa_limit(tier);
        assert_eq!(cpu::active_isa(), tier);
        for check in selftest::run_fusion(&selftest::Cpu, 21 + tier as u64) {
            assert!(check.passed(), "tier {}: {check}", tier.as_str());
        }
        let mut rng = a3d::rng::SplitMix64::new(3);
        let shape = [2, 3, 7, 95, 91];
        let n: usize = shape.iter().product();
        let x = a3d::Tensor::from_vec(rng.vec_f32(n, -1.0, 1.0), &shape).unwrap();
        let dy = a3d::Tensor::from_vec(rng.vec_f32(n, -1.0, 1.0), &shape).unwrap();
        let w = fusion::init_weights(7, 3, 5).unwrap();
        let dw = |threads| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| fusion::backward(&x, &w, &dy, Grads::WEIGHT).unwrap().dw)
        };
        assert_eq!(dw(1), dw(4), "tier {}", tier.as_str());
    }
    cpu::set_isa_limit(Isa::Avx512);
}
