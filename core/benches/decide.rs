//! Rule scale: the decision at 10 / 1,000 / 100,000 rules with the caller already verified
//! (no cache, no signature: only matching and combining), compiling 100,000 rules, and the
//! pluginConfig size for 10,000 rules. Issue targets: decision at 100,000 rules ≤ 1.5× at 10;
//! pluginConfig for 10,000 rules ≤ 1 MiB; compile 100,000 rules ≤ 2 s. The figures are
//! printed after criterion's (`cargo bench -p claimgate-core --bench decide`).

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[path = "support/policy_gen.rs"]
mod policy_gen;

use std::hint::black_box;
use std::rc::Rc;
use std::time::{Duration, Instant};

use claimgate_core::blob;
use claimgate_core::compile::compile;
use claimgate_core::engine::{Engine, Identity, RemoteKeys, Request};
use criterion::{BenchmarkId, Criterion, criterion_group};
use jwt_simple::prelude::*;

const NOW: u64 = 1_900_000_000;
const SIZES: [usize; 3] = [10, 1_000, 100_000];

fn engine(rules: usize) -> Engine {
    let text = policy_gen::policy_toml(rules);
    let compiled = compile(&text, "scale.toml", &|_| Err("no files".to_owned())).unwrap();
    let config = serde_json::to_vec(&blob::plugin_config(&compiled.policy).unwrap()).unwrap();
    blob::engine_from_plugin_config(&config).unwrap()
}

/// A token of the middle tenant's caller, and its verified identity.
fn caller(engine: &Engine, tenant: usize) -> (String, Rc<Identity>) {
    let claims: JWTClaims<serde_json::Map<String, serde_json::Value>> =
        serde_json::from_value(policy_gen::caller_claims(tenant, NOW)).unwrap();
    let token = HS256Key::from_bytes(&policy_gen::HMAC_SECRET)
        .authenticate(claims)
        .unwrap();
    let identity = engine
        .authenticate(&token, NOW, &RemoteKeys::default(), &mut None)
        .unwrap();
    (token, Rc::new(identity))
}

/// One request shape of the benchmark: method, path, whether it is allowed.
struct Case {
    label: &'static str,
    method: &'static str,
    path: fn(usize) -> String,
    allowed: bool,
}

const CASES: [Case; 3] = [
    Case {
        label: "predict_allowed",
        method: "POST",
        path: |t| format!("/v1/tenants/t{t}/models/fraud:predict"),
        allowed: true,
    },
    Case {
        label: "metadata_denied_role",
        method: "GET",
        path: |t| format!("/v2/tenants/t{t}/models/fraud/ready"),
        allowed: false,
    },
    Case {
        label: "other_tenant_denied",
        method: "POST",
        path: |t| format!("/v1/tenants/t{}/models/fraud:predict", t + 1),
        allowed: false,
    },
];

/// Decides `path` for the verified caller; the closure never verifies anything.
fn decide(
    engine: &Engine,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    identity: &Rc<Identity>,
) -> bool {
    let request = Request {
        method,
        host: "api.example.com",
        path,
        headers,
    };
    engine
        .decide_with(&request, None, &mut |_, _| Ok(identity.clone()))
        .allowed
}

fn bench_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    group.measurement_time(Duration::from_secs(2));
    group.warm_up_time(Duration::from_millis(500));
    for rules in SIZES {
        let engine = engine(rules);
        let tenant = policy_gen::middle_tenant(rules);
        let (token, identity) = caller(&engine, tenant);
        let headers = vec![
            ("authorization".to_owned(), format!("Bearer {token}")),
            ("content-type".to_owned(), "application/json".to_owned()),
        ];
        for case in &CASES {
            let path = (case.path)(tenant);
            assert_eq!(
                decide(&engine, case.method, &path, &headers, &identity),
                case.allowed,
                "{} at {rules} rules",
                case.label
            );
            group.bench_with_input(BenchmarkId::new(case.label, rules), &rules, |b, _| {
                b.iter(|| decide(&engine, case.method, black_box(&path), &headers, &identity))
            });
        }
    }
    group.finish();
}

/// The rule-scale figures, measured outside criterion and printed: the decision
/// ratio 100,000 : 10 rules (interleaved rounds, best round of each), the pluginConfig size
/// at 10,000 rules and the compile time of 100,000 rules.
fn scale_figures() {
    let small = engine(10);
    let large = engine(100_000);
    let prepared = [&small, &large].map(|engine| {
        let tenant = policy_gen::middle_tenant(engine.policy().rules.len());
        let (token, identity) = caller(engine, tenant);
        let headers = vec![("authorization".to_owned(), format!("Bearer {token}"))];
        let path = format!("/v1/tenants/t{tenant}/models/fraud:predict");
        (engine, headers, path, identity)
    });
    let mut best = [f64::MAX; 2];
    for _round in 0..15 {
        for (slot, (engine, headers, path, identity)) in prepared.iter().enumerate() {
            let iterations = 20_000;
            let start = Instant::now();
            for _ in 0..iterations {
                black_box(decide(engine, "POST", black_box(path), headers, identity));
            }
            let ns = start.elapsed().as_nanos() as f64 / f64::from(iterations);
            best[slot] = best[slot].min(ns);
        }
    }
    println!(
        "scale: decide at 10 rules {:.0} ns, at 100,000 rules {:.0} ns: ratio {:.2} (target ≤ 1.5)",
        best[0],
        best[1],
        best[1] / best[0]
    );

    let compiled = compile(&policy_gen::policy_toml(10_000), "p.toml", &|_| {
        Err(String::new())
    })
    .unwrap();
    let config = serde_json::to_string(&blob::plugin_config(&compiled.policy).unwrap()).unwrap();
    println!(
        "scale: pluginConfig for 10,000 rules {} bytes = {:.2} MiB (target ≤ 1 MiB)",
        config.len(),
        config.len() as f64 / (1024.0 * 1024.0)
    );

    let text = policy_gen::policy_toml(100_000);
    let start = Instant::now();
    let compiled = compile(&text, "p.toml", &|_| Err(String::new())).unwrap();
    let compile_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let config = serde_json::to_string(&blob::plugin_config(&compiled.policy).unwrap()).unwrap();
    let encode_s = start.elapsed().as_secs_f64();
    let start = Instant::now();
    black_box(blob::engine_from_plugin_config(config.as_bytes()).unwrap());
    let load_s = start.elapsed().as_secs_f64();
    println!(
        "scale: 100,000 rules ({} KiB of TOML): compile {compile_s:.2} s (target ≤ 2 s), encode {encode_s:.2} s, pluginConfig {:.1} MiB, filter load {load_s:.2} s",
        text.len() / 1024,
        config.len() as f64 / (1024.0 * 1024.0)
    );
}

criterion_group!(benches, bench_decide);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    scale_figures();
}
